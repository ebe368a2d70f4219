"""The Kubernetes manifests as a platform engineer applies them: rendered by kustomize, validated, and checked.

- Every overlay (dev, prod) × every subset of the optional components it does not already include is rendered
  with ``kubectl kustomize`` of the newest kustomize found; every other kustomize version (the kubectl binaries
  on PATH and the ``kubectl.1.NN`` beside the one it links to: kustomize 5.0 through 5.6 here) renders each
  overlay as it is, with each single extra component and with all of them; every kubectl binary renders both
  overlays as they are. Rendered once per session (fixture ``renders``, :func:`render_jobs`).
- Every rendered object is validated with ``kubernetes-validate`` in strict mode (unknown fields rejected, as
  ``kubernetes-validate --strict``) against the three newest Kubernetes versions the package ships; custom
  resources (KEDA ScaledObject, Gateway API Gateway/HTTPRoute, cert-manager Certificate/Issuer), for which it
  has no schema, against the openAPIV3Schema of their projects' CRDs (tests/data/crds, copied from the source
  each file names; unknown fields rejected the same way; CEL rules are not evaluated).
- Capacity wiring is checked over the rendered objects: no replicas on KEDA-managed workloads, the Prometheus
  address from one place, the PostgreSQL connection budget, topology spread, PDBs, grace periods, priority,
  the recorder's StatefulSet and volume, the Gateway API edge, the NATS credentials and TLS wiring.

Without kubectl these tests skip (with the reason); under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import copy
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.integration.k8s_support import (
    K8S,
    OVERLAYS,
    ROOT,
    Render,
    combinations,
    combo_dir,
    connection_budget,
    env_of,
    first_container,
    kubectls,
    kustomization,
    newest_kubectl,
    newest_kubernetes,
    problems,
    render_jobs,
    render_once,
    require_kubectl,
    unique_objects,
)

KEDA_TARGETS = {"session", "tools"}
LIVE_CALLS = ("gateway", "session")
SPREAD = ("gateway", "session", "tools")


# --- kubectl discovery and rendering -----------------------------------------------------------------


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> list[Render]:
    """The renders of :func:`render_jobs`, two kubectl processes at a time."""
    found = require_kubectl()
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    jobs = render_jobs(found)
    for overlay, extra in {(o, e) for _, o, e in jobs}:  # create the directories before rendering in threads
        combo_dir(tree, overlay, extra)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: render_once(job[0], tree, job[1], job[2]), jobs))


@pytest.fixture(scope="session")
def rendered(renders: list[Render]) -> list[Render]:
    """The successful renders (the render test reports the failures)."""
    return [r for r in renders if r.error is None]


def test_every_overlay_and_component_combination_renders_with_every_kustomize(renders: list[Render]) -> None:
    failures = [f"{r.label}: {r.error}" for r in renders if r.error is not None]
    assert not failures, "\n".join(failures)
    assert {r.kubectl.kustomize for r in renders} == {k.kustomize for k in kubectls()}
    newest = newest_kubectl(kubectls())
    assert {(r.overlay, r.extra) for r in renders if r.kubectl == newest} == set(combinations())
    for k in kubectls():
        assert {r.overlay for r in renders if r.kubectl == k and not r.extra} == set(OVERLAYS), k
        if k.kustomize != newest.kustomize:
            assert any(len(r.extra) > 1 for r in renders if r.kubectl.kustomize == k.kustomize)


# --- schema validation -------------------------------------------------------------------------------


def test_every_rendered_object_validates_strictly(rendered: list[Render]) -> None:
    versions = newest_kubernetes()
    assert len(versions) == 3
    failures: list[str] = []
    for obj, where in unique_objects(rendered).values():
        for problem in problems(obj, versions):
            failures.append(f"{where}: {obj['kind']} {obj['metadata']['name']}: {problem}")
    assert not failures, "\n".join(failures[:50])


def test_the_validation_rejects_unknown_fields_and_wrong_types(rendered: list[Render]) -> None:
    versions = newest_kubernetes()[-1:]
    prod = next(r for r in rendered if r.overlay == "prod" and not r.extra)
    for kind, name in (("Deployment", "gateway"), ("ScaledObject", "session"), ("HTTPRoute", "gateway"),
                       ("StatefulSet", "recorder")):
        good = prod.get(kind, name)
        assert not problems(good, versions)
        typo = copy.deepcopy(good)
        typo["spec"]["replicaz"] = 1
        assert problems(typo, versions), f"{kind}: an unknown field passed"
        wrong = copy.deepcopy(good)
        wrong["spec"]["minReplicaCount" if kind == "ScaledObject" else "rules" if kind == "HTTPRoute"
                      else "replicas"] = "three"
        assert problems(wrong, versions), f"{kind}: a wrong type passed"
    cert = copy.deepcopy(next(r for r in rendered if "cert-manager" in r.extra).get("Certificate", "nats-server-tls"))
    cert["spec"]["privateKey"]["algorithm"] = "DSA"
    assert problems(cert, versions), "an invalid enum value passed"


# --- capacity wiring -----------------------------------------------------------------------------------


def test_keda_managed_workloads_have_no_replicas_and_scale_what_exists(rendered: list[Render]) -> None:
    seen = 0
    for r in rendered:
        for so in r.kinds("ScaledObject"):
            seen += 1
            target = r.get("Deployment", so["spec"]["scaleTargetRef"]["name"])
            assert "replicas" not in target["spec"], f"{r.label}: {target['metadata']['name']} pins replicas"
        assert {so["spec"]["scaleTargetRef"]["name"] for so in r.kinds("ScaledObject")} in (set(), KEDA_TARGETS)
        for name in KEDA_TARGETS:
            assert "replicas" not in r.get("Deployment", name)["spec"], r.label
    assert seen


def test_prometheus_address_comes_from_one_place(rendered: list[Render]) -> None:
    seen = 0
    for r in rendered:
        address = r.configmap("switchboard-platform")["prometheus-address"]
        assert address.startswith("http")
        for so in r.kinds("ScaledObject"):
            for trigger in so["spec"]["triggers"]:
                assert trigger["type"] == "prometheus"
                assert trigger["metadata"]["serverAddress"] == address, r.label
                seen += 1
    assert seen


def test_database_connection_budget_fits_max_connections(rendered: list[Render]) -> None:
    for r in rendered:
        needed, max_conn, per = connection_budget(r)
        assert set(per) == {"tools", "recorder", "analytics"}, f"{r.label}: {per}"
        assert needed <= max_conn, f"{r.label}: {per} + reserve = {needed} > max_connections {max_conn}"
        if r.overlay == "dev":  # the dev PostgreSQL is started with that max_connections
            pg = r.get("StatefulSet", "postgres")
            assert first_container(pg)["args"] == ["-c", "max_connections=$(POSTGRES_MAX_CONNECTIONS)"]
            ref = env_of(r, pg)["POSTGRES_MAX_CONNECTIONS"]["configMapKeyRef"]
            assert (ref["name"], ref["key"]) == ("switchboard-platform", "postgres-max-connections")
    # the check can fail: ten times the tools pods do not fit
    prod = next(r for r in rendered if r.overlay == "prod" and not r.extra)
    bigger = copy.deepcopy(prod.get("ScaledObject", "tools"))
    bigger["spec"]["maxReplicaCount"] *= 10
    objects = tuple(bigger if o is prod.get("ScaledObject", "tools") else o for o in prod.objects)
    needed, max_conn, _ = connection_budget(Render(prod.overlay, prod.extra, prod.kubectl, objects, None))
    assert needed > max_conn


def test_recorder_is_a_statefulset_of_one_with_recordings_on_a_claim(rendered: list[Render]) -> None:
    for r in rendered:
        assert not [d for d in r.kinds("Deployment") if d["metadata"]["name"] == "recorder"], r.label
        rec = r.get("StatefulSet", "recorder")
        assert rec["spec"]["replicas"] == 1 and rec["spec"]["serviceName"] == "recorder"
        assert r.get("Service", "recorder")
        claims = {c["metadata"]["name"] for c in rec["spec"]["volumeClaimTemplates"]}
        mounts = {m["mountPath"]: m["name"] for m in first_container(rec)["volumeMounts"]}
        directory = env_of(r, rec)["SWITCHBOARD_RECORDINGS_DIR"]
        assert mounts.get(directory) in claims, f"{r.label}: {directory} is not on a PersistentVolumeClaim"


def test_no_call_data_on_emptydir(rendered: list[Render]) -> None:
    scratch = {"/tmp", "/var/run/postgresql"}
    for r in rendered:
        for w in r.workloads():
            pod = w["spec"]["template"]["spec"]
            empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    if m["name"] in empty:
                        assert m["mountPath"] in scratch, f"{r.label}: {w['metadata']['name']} {m['mountPath']}"
            data_dir = env_of(r, w).get("SWITCHBOARD_DATA_DIR")
            if isinstance(data_dir, str):
                for c in pod["containers"]:
                    for m in c.get("volumeMounts", []):
                        assert not (m["mountPath"] == data_dir and m["name"] in empty), r.label


def test_spread_pdbs_priority_and_grace_for_live_calls(rendered: list[Render]) -> None:
    for r in rendered:
        pdbs = [p["spec"]["selector"]["matchLabels"] for p in r.kinds("PodDisruptionBudget")]
        for name in SPREAD:
            w = r.get("Deployment", name)
            labels = w["spec"]["template"]["metadata"]["labels"]
            keys = set()
            for c in w["spec"]["template"]["spec"]["topologySpreadConstraints"]:
                assert c["labelSelector"]["matchLabels"].items() <= labels.items(), f"{r.label}: {name}"
                keys.add(c["topologyKey"])
            assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, f"{r.label}: {name}"
            assert any(sel.items() <= labels.items() for sel in pdbs), f"{r.label}: no PDB for {name}"
        priority = {p["metadata"]["name"]: p for p in r.kinds("PriorityClass")}
        for name in LIVE_CALLS:
            w = r.get("Deployment", name)
            pod = w["spec"]["template"]["spec"]
            drain = int(env_of(r, w)["SWITCHBOARD_DRAIN_S"])
            assert drain == 3600
            assert pod["terminationGracePeriodSeconds"] == drain + 30, f"{r.label}: {name}"
            assert pod["priorityClassName"] in priority, f"{r.label}: {name}"
            assert priority[pod["priorityClassName"]]["value"] > 0
        if "localmodel" in {d["metadata"]["name"] for d in r.kinds("Deployment")}:
            labels = r.get("Deployment", "localmodel")["spec"]["template"]["metadata"]["labels"]
            assert any(sel.items() <= labels.items() for sel in pdbs), f"{r.label}: no PDB for localmodel"


def test_the_edge_is_gateway_api_with_websocket_friendly_timeouts(rendered: list[Render]) -> None:
    seen = 0
    for r in rendered:
        assert not r.kinds("Ingress"), f"{r.label}: ingress-nginx is retired; use components/gateway-api"
        gateways = {g["metadata"]["name"]: g for g in r.kinds("Gateway")}
        for route in r.kinds("HTTPRoute"):
            seen += 1
            for parent in route["spec"]["parentRefs"]:
                listeners = {item["name"]: item for item in gateways[parent["name"]]["spec"]["listeners"]}
                assert parent["sectionName"] in listeners, r.label
                if "hostnames" in route["spec"]:
                    assert route["spec"]["hostnames"] == [listeners[parent["sectionName"]]["hostname"]]
            for rule in route["spec"]["rules"]:
                for ref in rule.get("backendRefs", []):
                    ports = [p["port"] for p in r.get("Service", ref["name"])["spec"]["ports"]]
                    assert ref["port"] in ports, f"{r.label}: {route['metadata']['name']}"
                    assert rule["timeouts"]["request"] == "0s", "long-lived WebSocket/SSE: no request timeout"
        for gateway in gateways.values():
            for listener in gateway["spec"]["listeners"]:
                if listener["protocol"] == "HTTPS":
                    assert listener["tls"]["certificateRefs"][0]["name"] == "switchboard-tls"
    assert seen
    prod = next(r for r in rendered if r.overlay == "prod" and not r.extra)
    public = prod.configmap("switchboard-config")["SWITCHBOARD_PUBLIC_URL"].removeprefix("https://")
    assert public in prod.get("HTTPRoute", "gateway")["spec"]["hostnames"]


def test_nats_clients_get_their_own_credential_and_the_ca(rendered: list[Render]) -> None:
    values = yaml.safe_load((ROOT / "infra" / "nats" / "values.yaml").read_text())
    server_secret = values["config"]["nats"]["tls"]["secretName"]
    seen = 0
    for r in rendered:
        config = r.configmap("switchboard-config")
        authed = [w for w in r.workloads()
                  if w["metadata"].get("labels", {}).get("switchboard.io/nats-auth") == "true"]
        assert {w["metadata"]["name"] for w in authed} == {"gateway", "session", "tools", "recorder", "analytics"}
        if "nats-auth" not in (*r.extra, *(Path(c).name for c in kustomization(
                K8S / "overlays" / r.overlay / "kustomization.yaml").get("components", []))):
            assert config["SWITCHBOARD_NATS_URL"].startswith("nats://")
            continue
        seen += 1
        assert config["SWITCHBOARD_NATS_URL"] == f"tls://{values['fullnameOverride']}:4222"
        ca_dir = str(Path(config["SWITCHBOARD_NATS_TLS_CA"]).parent)
        for w in authed:
            name = w["metadata"]["name"]
            seed = env_of(r, w)["SWITCHBOARD_NATS_NKEY_SEED"]["secretKeyRef"]
            assert (seed["name"], seed["key"]) == ("switchboard-nats-credentials", f"{name}-seed"), r.label
            mounts = {m["mountPath"]: m["name"] for m in first_container(w)["volumeMounts"]}
            volume = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mounts[ca_dir])
            assert volume["secret"]["secretName"] == server_secret
            assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"], "only the CA, never the key"
        if "cert-manager" in r.extra:
            cert = r.get("Certificate", server_secret)
            assert cert["spec"]["secretName"] == server_secret
            assert {"nats", f"*.{values['fullnameOverride']}-headless"} <= set(cert["spec"]["dnsNames"])
            issuer = r.get("Issuer", cert["spec"]["issuerRef"]["name"])
            assert r.get("Certificate", issuer["spec"]["ca"]["secretName"])["spec"]["isCA"] is True
    assert seen
