"""Rendering and validating infra/k8s for tests/integration/test_k8s_render.py: kubectl discovery, the
overlay × component combinations, one render, strict schema validation (kubernetes-validate and the vendored CRD
schemas in tests/data/crds), and the rendered objects' environment and PostgreSQL connection budget."""

from __future__ import annotations

import ast
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

__all__ = [
    "CRDS",
    "DB_MODULES",
    "K8S",
    "OVERLAYS",
    "POOL_ENV",
    "ROOT",
    "Doc",
    "Kubectl",
    "Render",
    "combinations",
    "combo_dir",
    "connection_budget",
    "crd_validators",
    "env_of",
    "first_container",
    "kubectls",
    "kustomization",
    "newest_kubectl",
    "newest_kubernetes",
    "optional_components",
    "problems",
    "render_jobs",
    "render_once",
    "require_kubectl",
    "unique_objects",
]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
CRDS = ROOT / "tests" / "data" / "crds"
OVERLAYS = ("dev", "prod")

Doc = dict[str, Any]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_HASHED = re.compile(
    r"\b(switchboard-config|otel-collector-config|switchboard-secrets|postgres-credentials)-[a-z0-9]{10}\b")


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


def require_kubectl() -> tuple[Kubectl, ...]:
    found = kubectls()
    if not found:
        reason = "no kubectl on PATH: the Kubernetes manifests cannot be rendered"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: these tests must run)")
        pytest.skip(reason)
    return found


def kustomization(path: Path) -> Doc:
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
        included = {Path(c).name for c in kustomization(K8S / "overlays" / overlay / "kustomization.yaml")
                    .get("components", [])}
        rest = [c for c in optional_components() if c not in included]
        for n in range(len(rest) + 1):
            out.extend((overlay, extra) for extra in itertools.combinations(rest, n))
    return out


def combo_dir(tree: Path, overlay: str, extra: tuple[str, ...]) -> Path:
    """A copy of ``overlay`` inside ``tree`` (a copy of infra/k8s) whose components list adds ``extra``."""
    if not extra:
        return tree / "overlays" / overlay
    target = tree / "overlays" / f"{overlay}--{'-'.join(extra)}"
    if not target.exists():
        shutil.copytree(tree / "overlays" / overlay, target)
        kust = kustomization(target / "kustomization.yaml")
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


def render_once(kubectl: Kubectl, tree: Path, overlay: str, extra: tuple[str, ...]) -> Render:
    out = subprocess.run([str(kubectl.path), "kustomize", str(combo_dir(tree, overlay, extra))],
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        return Render(overlay, extra, kubectl, (), out.stderr.strip() or f"exit {out.returncode}")
    docs = tuple(d for d in yaml.load_all(out.stdout, Loader=_LOADER) if d)
    return Render(overlay, extra, kubectl, docs, None)


def newest_kubectl(found: tuple[Kubectl, ...]) -> Kubectl:
    def key(k: Kubectl) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", k.kustomize)[:3])
    return max(found, key=key)


def render_jobs(found: tuple[Kubectl, ...]) -> list[tuple[Kubectl, str, tuple[str, ...]]]:
    """What to render (about 90 kubectl runs): every combination with the newest kustomize; each overlay as it
    is, with each single extra component and with all of them, with every other kustomize version; both overlays
    as they are with every kubectl binary."""
    newest = newest_kubectl(found)
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


def newest_kubernetes() -> list[str]:
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


def problems(obj: Doc, versions: list[str]) -> list[str]:
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


def unique_objects(rendered: list[Render]) -> dict[str, tuple[Doc, str]]:
    out: dict[str, tuple[Doc, str]] = {}
    for r in rendered:
        for obj in r.objects:
            # generated names differ only by their content hash between combinations: validate each shape once
            text = _HASHED.sub(r"\1", json.dumps(obj, sort_keys=True))
            digest = hashlib.sha256(text.encode()).hexdigest()
            out.setdefault(digest, (obj, r.label))
    return out


def first_container(workload: Doc) -> Doc:
    container: Doc = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(render: Render, workload: Doc) -> dict[str, Any]:
    """The container's environment: envFrom ConfigMaps, then env (values or their valueFrom)."""
    container = first_container(workload)
    out: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            cm = next(o for o in render.kinds("ConfigMap") if o["metadata"]["name"] == ref["name"])
            out.update(cm.get("data", {}))
    for env in container.get("env", []):
        out[env["name"]] = env.get("value", env.get("valueFrom"))
    return out


def pool_per_pod(module: Path) -> int:
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


DB_MODULES = {"tools": ROOT / "services" / "tools" / "db.py", "recorder": ROOT / "services" / "recorder" / "db.py",
              "analytics": ROOT / "services" / "recorder" / "db.py"}  # analytics uses the recorder's engine
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
        env = env_of(r, w)
        if "SWITCHBOARD_DATABASE_URL" not in env:
            continue
        name = w["metadata"]["name"]
        service = first_container(w)["args"][0]
        pool = int(env[POOL_ENV]) if isinstance(env.get(POOL_ENV), str) else pool_per_pod(DB_MODULES[service])
        pods = keda.get(name, int(w["spec"].get("replicas", 1)))
        if w["kind"] == "Deployment":
            surge = w["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", "25%")
            pods += int(surge) if isinstance(surge, int) else -(-pods * int(str(surge).rstrip("%")) // 100)
        per[name] = pool * pods
        needed += per[name]
    return needed, max_conn, per
