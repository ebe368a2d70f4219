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

import ast
import copy
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
CRDS = ROOT / "tests" / "data" / "crds"
OVERLAYS = ("dev", "prod")
KEDA_TARGETS = {"session", "tools"}
LIVE_CALLS = ("gateway", "session")
SPREAD = ("gateway", "session", "tools")

Doc = dict[str, Any]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_HASHED = re.compile(
    r"\b(switchboard-config|otel-collector-config|switchboard-secrets|postgres-credentials)-[a-z0-9]{10}\b")


# --- kubectl discovery and rendering -----------------------------------------------------------------


@dataclass(frozen=True)
class Kubectl:
    """One kubectl binary and the kustomize version built into it."""

    path: Path
    version: str
    kustomize: str


def _candidates() -> Iterator[Path]:
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder:
            continue
        base = Path(folder) / "kubectl"
        if base.exists():
            yield base
            yield from sorted(base.resolve().parent.glob("kubectl.1.*"))
        yield from sorted(Path(folder).glob("kubectl.1.*"))


@functools.cache
def kubectls() -> tuple[Kubectl, ...]:
    """Every distinct kubectl binary found (by real path), with its client and kustomize versions."""
    seen: dict[Path, Kubectl] = {}
    for path in _candidates():
        real = path.resolve()
        if real in seen or not os.access(real, os.X_OK):
            continue
        out = subprocess.run([str(real), "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=60, check=False)
        if out.returncode != 0:
            continue
        info = json.loads(out.stdout)
        seen[real] = Kubectl(real, info["clientVersion"]["gitVersion"], str(info.get("kustomizeVersion")))
    return tuple(seen.values())


def _require_kubectl() -> tuple[Kubectl, ...]:
    found = kubectls()
    if not found:
        reason = "no kubectl on PATH: the Kubernetes manifests cannot be rendered"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: these tests must run)")
        pytest.skip(reason)
    return found


def _kustomization(path: Path) -> Doc:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def optional_components() -> list[str]:
    """Names of the directories under infra/k8s/components."""
    return sorted(p.parent.name for p in (K8S / "components").glob("*/kustomization.yaml"))


def combinations() -> list[tuple[str, tuple[str, ...]]]:
    """(overlay, extra components) for every overlay × subset of the components it does not include."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for overlay in OVERLAYS:
        included = {Path(c).name for c in _kustomization(K8S / "overlays" / overlay / "kustomization.yaml")
                    .get("components", [])}
        rest = [c for c in optional_components() if c not in included]
        for n in range(len(rest) + 1):
            out.extend((overlay, extra) for extra in itertools.combinations(rest, n))
    return out


def _combo_dir(tree: Path, overlay: str, extra: tuple[str, ...]) -> Path:
    """A copy of ``overlay`` inside ``tree`` (a copy of infra/k8s) whose components list adds ``extra``."""
    if not extra:
        return tree / "overlays" / overlay
    target = tree / "overlays" / f"{overlay}--{'-'.join(extra)}"
    if not target.exists():
        shutil.copytree(tree / "overlays" / overlay, target)
        kust = _kustomization(target / "kustomization.yaml")
        kust["components"] = [*kust.get("components", []), *(f"../../components/{c}" for c in extra)]
        (target / "kustomization.yaml").write_text(yaml.safe_dump(kust, sort_keys=False))
    return target


@dataclass(frozen=True)
class Render:
    """One rendering: which overlay and extra components, by which kubectl, and the objects (or the error)."""

    overlay: str
    extra: tuple[str, ...]
    kubectl: Kubectl
    objects: tuple[Doc, ...]
    error: str | None

    @property
    def label(self) -> str:
        """``prod+localmodel @ kubectl v1.33.1 (kustomize v5.6.0)``."""
        return f"{'+'.join((self.overlay, *self.extra))} @ kubectl {self.kubectl.version} " \
               f"(kustomize {self.kubectl.kustomize})"

    def kinds(self, kind: str) -> list[Doc]:
        """The rendered objects of ``kind``."""
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str) -> Doc:
        """The one object of ``kind`` named ``name``."""
        found = [o for o in self.kinds(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.label}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def configmap(self, prefix: str) -> dict[str, str]:
        """The data of the ConfigMap named ``prefix`` (or ``prefix-<hash>``)."""
        found = [o for o in self.kinds("ConfigMap")
                 if re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])]
        assert len(found) == 1, f"{self.label}: ConfigMap {prefix}: {len(found)}"
        data: dict[str, str] = found[0].get("data", {})
        return data

    def workloads(self) -> list[Doc]:
        """Deployments and StatefulSets."""
        return self.kinds("Deployment") + self.kinds("StatefulSet")


def _render(kubectl: Kubectl, tree: Path, overlay: str, extra: tuple[str, ...]) -> Render:
    out = subprocess.run([str(kubectl.path), "kustomize", str(_combo_dir(tree, overlay, extra))],
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        return Render(overlay, extra, kubectl, (), out.stderr.strip() or f"exit {out.returncode}")
    docs = tuple(d for d in yaml.load_all(out.stdout, Loader=_LOADER) if d)
    return Render(overlay, extra, kubectl, docs, None)


def _newest(found: tuple[Kubectl, ...]) -> Kubectl:
    def key(k: Kubectl) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", k.kustomize)[:3])
    return max(found, key=key)


def render_jobs(found: tuple[Kubectl, ...]) -> list[tuple[Kubectl, str, tuple[str, ...]]]:
    """What to render (about 90 kubectl runs): every combination with the newest kustomize; each overlay as it
    is, with each single extra component and with all of them, with every other kustomize version; both overlays
    as they are with every kubectl binary."""
    newest = _newest(found)
    by_kustomize: dict[str, Kubectl] = {}
    for k in found:
        by_kustomize.setdefault(k.kustomize, k)
    jobs: set[tuple[Kubectl, str, tuple[str, ...]]] = set()
    combos = combinations()
    for overlay, extra in combos:
        jobs.add((newest, overlay, extra))
        widest = max(len(e) for o, e in combos if o == overlay)
        if len(extra) <= 1 or len(extra) == widest:
            jobs.update((k, overlay, extra) for k in by_kustomize.values())
        if not extra:
            jobs.update((k, overlay, extra) for k in found)
    return sorted(jobs, key=lambda j: (str(j[0].path), j[1], j[2]))


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> list[Render]:
    """The renders of :func:`render_jobs`, two kubectl processes at a time."""
    found = _require_kubectl()
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    jobs = render_jobs(found)
    for overlay, extra in {(o, e) for _, o, e in jobs}:  # create the directories before rendering in threads
        _combo_dir(tree, overlay, extra)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda job: _render(job[0], tree, job[1], job[2]), jobs))


@pytest.fixture(scope="session")
def rendered(renders: list[Render]) -> list[Render]:
    """The successful renders (the render test reports the failures)."""
    return [r for r in renders if r.error is None]


def test_every_overlay_and_component_combination_renders_with_every_kustomize(renders: list[Render]) -> None:
    failures = [f"{r.label}: {r.error}" for r in renders if r.error is not None]
    assert not failures, "\n".join(failures)
    assert {r.kubectl.kustomize for r in renders} == {k.kustomize for k in kubectls()}
    newest = _newest(kubectls())
    assert {(r.overlay, r.extra) for r in renders if r.kubectl == newest} == set(combinations())
    for k in kubectls():
        assert {r.overlay for r in renders if r.kubectl == k and not r.extra} == set(OVERLAYS), k
        if k.kustomize != newest.kustomize:
            assert any(len(r.extra) > 1 for r in renders if r.kubectl.kustomize == k.kustomize)


# --- schema validation -------------------------------------------------------------------------------


def _newest_kubernetes() -> list[str]:
    versions = sorted(set(kv_utils.all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
    return versions[-3:]


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties and neither
    allows extra properties nor preserves unknown fields (what the API server's strict field validation does)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) → a strict validator from the vendored CRD schemas."""
    out: dict[tuple[str, str], jsonschema.Draft7Validator] = {}
    for path in sorted(CRDS.glob("*.json")):
        crd = json.loads(path.read_text())
        for version, schema in crd["versions"].items():
            out[(f"{crd['group']}/{version}", crd["kind"])] = jsonschema.Draft7Validator(_strict(schema))
    return out


def _problems(obj: Doc, versions: list[str]) -> list[str]:
    """Schema errors of one object (empty when valid)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    validator = crd_validators().get(key)
    if validator is not None:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    errors: list[str] = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return [f"no schema for {key} in Kubernetes {version} nor in tests/data/crds"]
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"Kubernetes {version}: {'/'.join(map(str, exc.path))}: {exc.message}")
    return errors


def _unique_objects(rendered: list[Render]) -> dict[str, tuple[Doc, str]]:
    out: dict[str, tuple[Doc, str]] = {}
    for r in rendered:
        for obj in r.objects:
            # generated names differ only by their content hash between combinations: validate each shape once
            text = _HASHED.sub(r"\1", json.dumps(obj, sort_keys=True))
            digest = hashlib.sha256(text.encode()).hexdigest()
            out.setdefault(digest, (obj, r.label))
    return out


def test_every_rendered_object_validates_strictly(rendered: list[Render]) -> None:
    versions = _newest_kubernetes()
    assert len(versions) == 3
    failures: list[str] = []
    for obj, where in _unique_objects(rendered).values():
        for problem in _problems(obj, versions):
            failures.append(f"{where}: {obj['kind']} {obj['metadata']['name']}: {problem}")
    assert not failures, "\n".join(failures[:50])


def test_the_validation_rejects_unknown_fields_and_wrong_types(rendered: list[Render]) -> None:
    versions = _newest_kubernetes()[-1:]
    prod = next(r for r in rendered if r.overlay == "prod" and not r.extra)
    for kind, name in (("Deployment", "gateway"), ("ScaledObject", "session"), ("HTTPRoute", "gateway"),
                       ("StatefulSet", "recorder")):
        good = prod.get(kind, name)
        assert not _problems(good, versions)
        typo = copy.deepcopy(good)
        typo["spec"]["replicaz"] = 1
        assert _problems(typo, versions), f"{kind}: an unknown field passed"
        wrong = copy.deepcopy(good)
        wrong["spec"]["minReplicaCount" if kind == "ScaledObject" else "rules" if kind == "HTTPRoute"
                      else "replicas"] = "three"
        assert _problems(wrong, versions), f"{kind}: a wrong type passed"
    cert = copy.deepcopy(next(r for r in rendered if "cert-manager" in r.extra).get("Certificate", "nats-server-tls"))
    cert["spec"]["privateKey"]["algorithm"] = "DSA"
    assert _problems(cert, versions), "an invalid enum value passed"


# --- capacity wiring -----------------------------------------------------------------------------------


def _container(workload: Doc) -> Doc:
    container: Doc = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(render: Render, workload: Doc) -> dict[str, Any]:
    """The container's environment: envFrom ConfigMaps, then env (values or their valueFrom)."""
    container = _container(workload)
    out: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            cm = next(o for o in render.kinds("ConfigMap") if o["metadata"]["name"] == ref["name"])
            out.update(cm.get("data", {}))
    for env in container.get("env", []):
        out[env["name"]] = env.get("value", env.get("valueFrom"))
    return out


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


def _pool_per_pod(module: Path) -> int:
    """Connections one process may open: ``pool_size + max_overflow`` of the module's PostgreSQL engine (the
    ``create_async_engine`` call that sets ``pool_size``), read from the code."""
    tree = ast.parse(module.read_text())
    sizes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "create_async_engine":
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if "pool_size" in kw:
                pool = ast.literal_eval(kw["pool_size"])
                overflow = ast.literal_eval(kw["max_overflow"]) if "max_overflow" in kw else 10  # SQLAlchemy default
                sizes.append(int(pool) + int(overflow))
    assert sizes, f"{module}: no PostgreSQL engine with pool_size"
    return max(sizes)


DB_MODULES = {"tools": ROOT / "services" / "tools" / "db.py", "recorder": ROOT / "services" / "recorder" / "db.py"}
POOL_ENV = "SWITCHBOARD_DB_POOL_SIZE"
"""Not a setting yet: when the manifests set it, it overrides the code default (pool + overflow) per pod."""


def connection_budget(r: Render) -> tuple[int, int, dict[str, int]]:
    """``(connections needed, max_connections, per workload)``: for every workload whose container gets
    ``SWITCHBOARD_DATABASE_URL``: connections per pod (the env override, else the code's pool_size +
    max_overflow) × its most pods (KEDA maxReplicaCount, else replicas, default 1; plus the rolling update's
    surge), plus the platform's reserved connections (superuser, migrations, backups, operators)."""
    platform = r.configmap("switchboard-platform")
    max_conn = int(platform["postgres-max-connections"])
    needed = int(platform["postgres-reserved-connections"])
    keda = {so["spec"]["scaleTargetRef"]["name"]: int(so["spec"]["maxReplicaCount"]) for so in r.kinds("ScaledObject")}
    per: dict[str, int] = {}
    for w in r.workloads():
        env = _env(r, w)
        if "SWITCHBOARD_DATABASE_URL" not in env:
            continue
        name = w["metadata"]["name"]
        service = _container(w)["args"][0]
        pool = int(env[POOL_ENV]) if isinstance(env.get(POOL_ENV), str) else _pool_per_pod(DB_MODULES[service])
        pods = keda.get(name, int(w["spec"].get("replicas", 1)))
        if w["kind"] == "Deployment":
            surge = w["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", "25%")
            pods += int(surge) if isinstance(surge, int) else -(-pods * int(str(surge).rstrip("%")) // 100)
        per[name] = pool * pods
        needed += per[name]
    return needed, max_conn, per


def test_database_connection_budget_fits_max_connections(rendered: list[Render]) -> None:
    for r in rendered:
        needed, max_conn, per = connection_budget(r)
        assert set(per) == {"tools", "recorder"}, f"{r.label}: {per}"
        assert needed <= max_conn, f"{r.label}: {per} + reserve = {needed} > max_connections {max_conn}"
        if r.overlay == "dev":  # the dev PostgreSQL is started with that max_connections
            pg = r.get("StatefulSet", "postgres")
            assert _container(pg)["args"] == ["-c", "max_connections=$(POSTGRES_MAX_CONNECTIONS)"]
            ref = _env(r, pg)["POSTGRES_MAX_CONNECTIONS"]["configMapKeyRef"]
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
        mounts = {m["mountPath"]: m["name"] for m in _container(rec)["volumeMounts"]}
        directory = _env(r, rec)["SWITCHBOARD_RECORDINGS_DIR"]
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
            data_dir = _env(r, w).get("SWITCHBOARD_DATA_DIR")
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
            drain = int(_env(r, w)["SWITCHBOARD_DRAIN_S"])
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
        assert {w["metadata"]["name"] for w in authed} == {"gateway", "session", "tools", "recorder"}
        if "nats-auth" not in (*r.extra, *(Path(c).name for c in _kustomization(
                K8S / "overlays" / r.overlay / "kustomization.yaml").get("components", []))):
            assert config["SWITCHBOARD_NATS_URL"].startswith("nats://")
            continue
        seen += 1
        assert config["SWITCHBOARD_NATS_URL"] == f"tls://{values['fullnameOverride']}:4222"
        ca_dir = str(Path(config["SWITCHBOARD_NATS_TLS_CA"]).parent)
        for w in authed:
            name = w["metadata"]["name"]
            seed = _env(r, w)["SWITCHBOARD_NATS_NKEY_SEED"]["secretKeyRef"]
            assert (seed["name"], seed["key"]) == ("switchboard-nats-credentials", f"{name}-seed"), r.label
            mounts = {m["mountPath"]: m["name"] for m in _container(w)["volumeMounts"]}
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
