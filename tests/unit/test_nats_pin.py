"""nats-py is pinned to the minor versions whose private internals shared/bus/wire.py overrides."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from shared.bus import wire

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_nats_py_is_one_whose_internals_we_override() -> None:
    """Fails on any nats-py minor version not in TESTED_NATS_PY: its ``_send_ping`` / ``_send_publish`` /
    ``_parse_header_lines`` may differ from what SwitchboardClient replaces, so check them and extend the list."""
    assert wire.nats_py_minor() in wire.TESTED_NATS_PY
    assert wire.FAST_CODEC


def test_pyproject_pins_nats_py_to_the_overridden_minor() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"nats-py\b", d))
    floor = re.search(r">=\s*([0-9]+)\.([0-9]+)", spec)
    ceiling = re.search(r"<\s*([0-9]+)\.([0-9]+)", spec)
    assert floor and ceiling, f"nats-py is not pinned to a minor version range: {spec!r}"
    major, minor = int(floor[1]), int(floor[2])
    assert (int(ceiling[1]), int(ceiling[2])) == (major, minor + 1), spec
    assert (f"{major}.{minor}",) == wire.TESTED_NATS_PY
