"""Layering: the CLI reads the recorder and analytics only through their public modules, and ``shared``
imports no service (issue 21, "rooms that match the layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import services.analytics.public as analytics_public
import services.recorder.public as recorder_public

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = {"services.recorder.public", "services.analytics.public"}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (``from services.recorder import public`` counts as
    ``services.recorder.public``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _service_imports(path: Path) -> set[str]:
    return {m for m in _imports(path) if m.startswith("services.")}


def test_cli_uses_only_the_public_service_apis() -> None:
    offending = {}
    for path in sorted((ROOT / "switchboard" / "cli").glob("*.py")):
        names = _service_imports(path)
        # ``from services.recorder.public import X`` also yields services.recorder.public.X: allowed
        private = {m for m in names if m not in PUBLIC and not any(m.startswith(p + ".") for p in PUBLIC)
                   and m not in {"services.recorder", "services.analytics"}}
        if private:
            offending[path.name] = sorted(private)
    assert offending == {}


def test_shared_imports_no_service() -> None:
    offending = {p.relative_to(ROOT).as_posix(): sorted(_service_imports(p))
                 for p in sorted((ROOT / "shared").rglob("*.py")) if _service_imports(p)}
    assert offending == {}


def test_public_surfaces_export_what_they_list() -> None:
    for module in (recorder_public, analytics_public):
        assert all(getattr(module, name, None) is not None for name in module.__all__)
    assert "tool_success" in analytics_public.RATES
