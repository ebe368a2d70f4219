"""The deployment manifests (infra/) and the event catalogue (docs/events.asyncapi.yaml) agree with the code.

The source files are checked in Python here (no kubectl needed): every YAML parses, every workload
(Deployment, StatefulSet) is hardened and probed, ports and environment variables are the ones
``shared.config`` defines, kustomize references resolve, and every AsyncAPI channel address matches what
``shared.subjects`` builds (and the stream that captures it). The NATS Helm values and the Dockerfile lint are
checked in test_infra_nats.py, the rendered manifests by tests/integration/test_k8s_render.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from shared import metrics, subjects
from shared.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
ASYNCAPI = ROOT / "docs" / "events.asyncapi.yaml"
SERVICES = ("gateway", "session", "tools", "recorder", "localmodel")
HTTP_PORTS = {"gateway": "gateway_port", "recorder": "recorder_port", "localmodel": "localmodel_port"}
PENDING_SETTINGS: set[str] = set()
"""Settings of the round-2 contract that the manifests already set and whose code comes with issues 22
(drain) and 23 (NATS authentication and TLS)."""
WORKLOADS = ("Deployment", "StatefulSet")

Doc = dict[str, Any]


# --- loading -----------------------------------------------------------------------------------------


@cache
def _yaml_files() -> tuple[Path, ...]:
    return tuple(sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml")))


@cache
def _load(path: Path) -> tuple[Any, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def _k8s_objects() -> Iterator[tuple[Path, Doc]]:
    for path in _yaml_files():
        if not path.is_relative_to(K8S) or path.name == "kustomization.yaml":
            continue
        for doc in _load(path):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                yield path, doc


def _deployments() -> list[tuple[Path, Doc]]:
    """Every workload: Deployments and StatefulSets."""
    return [(p, d) for p, d in _k8s_objects() if d["kind"] in WORKLOADS]


def _deployment(name: str) -> Doc:
    found = [d for _, d in _deployments() if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one workload {name}, found {len(found)}"
    return found[0]


def _kustomizations() -> list[tuple[Path, Doc]]:
    return [(p, _load(p)[0]) for p in _yaml_files() if p.name == "kustomization.yaml"]


def _literals(kust: Doc, generator: str, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for gen in kust.get(generator, []):
        if gen["name"] == name:
            for literal in gen.get("literals", []):
                key, _, value = literal.partition("=")
                out[key] = value
    return out


def _known_env() -> set[str]:
    """``SWITCHBOARD_<FIELD>`` for every setting, or its alias (``OPENAI_API_KEY``) where it has one."""
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names |= {str(c) for c in choices}
        else:
            names.add(f"SWITCHBOARD_{field.upper()}")
    return names


# --- YAML and kustomize structure --------------------------------------------------------------------


def test_every_yaml_under_infra_parses() -> None:
    files = _yaml_files()
    assert len(files) >= 15
    for path in files:
        assert _load(path), f"{path} is empty"


def test_kustomize_references_resolve() -> None:
    for path, kust in _kustomizations():
        kind = kust.get("kind")
        assert kind in ("Kustomization", "Component"), path
        if path.parent.parent.name == "components":
            assert kind == "Component", f"{path}: components must be kind Component"
        for entry in kust.get("resources", []):
            assert (path.parent / entry).exists(), f"{path}: resource {entry} missing"
        for entry in kust.get("components", []):
            target = path.parent / entry / "kustomization.yaml"
            assert target.exists() and _load(target)[0]["kind"] == "Component", f"{path}: {entry}"
        for gen in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
            for entry in gen.get("files", []):
                assert (path.parent / entry.split("=")[-1]).exists(), f"{path}: file {entry} missing"


def test_overlays_include_base_and_merges_target_generated_configmap() -> None:
    base = _load(K8S / "base" / "kustomization.yaml")[0]
    base_maps = {g["name"] for g in base["configMapGenerator"]}
    for overlay in ("dev", "prod"):
        kust = _load(K8S / "overlays" / overlay / "kustomization.yaml")[0]
        assert "../../base" in kust["resources"]
        assert "../../components/otel-collector" in kust["components"]
        assert kust.get("namespace")
    for path, kust in _kustomizations():
        for gen in kust.get("configMapGenerator", []):
            if gen.get("behavior") == "merge":
                assert gen["name"] in base_maps, f"{path}: merges into unknown ConfigMap {gen['name']}"


def test_workload_labels_and_selectors_agree() -> None:
    objects = list(_k8s_objects())
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for _, d in objects if d["kind"] in WORKLOADS]
    for path, doc in objects:
        if doc["kind"] in WORKLOADS:
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items(), path
            sa = doc["spec"]["template"]["spec"].get("serviceAccountName")
            assert sa and any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for _, d in objects), (
                f"{path}: ServiceAccount {sa} not defined")
        if doc["kind"] == "Service":
            sel = doc["spec"]["selector"]
            assert any(sel.items() <= labels.items() for labels in pod_labels), f"{path}: Service selects nothing"


# --- Deployments: hardening, probes, resources -------------------------------------------------------


def test_every_deployment_is_hardened_probed_and_bounded() -> None:
    deployments = _deployments()
    names = {d["metadata"]["name"] for _, d in deployments}
    assert set(SERVICES) <= names
    for path, dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        where = f"{path.relative_to(ROOT)}:{dep['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"].get("runAsUser", 0) != 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        mounted_volumes = {v["name"] for v in pod.get("volumes", [])}
        mounted_volumes |= {c["metadata"]["name"] for c in dep["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["runAsNonRoot"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "livenessProbe" in container and "readinessProbe" in container, where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounted_volumes, f"{where}: volume {mount['name']} undefined"
            if container["image"] == "switchboard":
                paths = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in paths, f"{where}: writable /tmp missing"
                claims = {c["metadata"]["name"] for c in dep["spec"].get("volumeClaimTemplates", [])}
                for mount in container["volumeMounts"]:
                    if mount["mountPath"].startswith("/var/lib/switchboard"):
                        assert mount["name"] in claims, f"{where}: {mount['mountPath']} must be a PersistentVolumeClaim"


def test_http_services_listen_and_are_probed_on_the_settings_ports() -> None:
    defaults = Settings.model_fields
    for name, field in HTTP_PORTS.items():
        port = defaults[field].default
        dep = _deployment(name)
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [name]
        assert [p["containerPort"] for p in container["ports"]] == [port]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        services = [d for _, d in _k8s_objects() if d["kind"] == "Service" and d["metadata"]["name"] == name]
        assert len(services) == 1 and services[0]["spec"]["ports"][0]["port"] == port


def test_nats_only_services_use_the_tiny_exec_probe_shipped_in_the_image() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert "infra/docker/nats-connected.sh /usr/local/bin/switchboard-nats-connected" in dockerfile
    for name in ("session", "tools"):
        container = _deployment(name)["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [name]
        assert "ports" not in container
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == ["switchboard-nats-connected"]


def test_dockerfile_is_one_slim_non_root_image_without_dev_extras() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert "[dev]" not in text
    assert 'ENTRYPOINT ["/usr/local/bin/switchboard-entrypoint"]' in text
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    assert exposed == {Settings.model_fields[f].default for f in HTTP_PORTS.values()}
    entry = (INFRA / "docker" / "entrypoint.sh").read_text()
    for name in SERVICES:
        assert name in entry
    assert 'exec python -m "services.${service}"' in entry


# --- configuration -----------------------------------------------------------------------------------


def test_every_env_var_in_the_manifests_is_a_known_setting() -> None:
    known = _known_env()
    seen: set[str] = set()
    for _, dep in _deployments():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            if container["image"] != "switchboard":
                continue
            for env in container.get("env", []):
                seen.add(env["name"])
    for _, kust in _kustomizations():
        seen |= set(_literals(kust, "configMapGenerator", "switchboard-config"))
    unknown = {n for n in seen if n not in known | PENDING_SETTINGS and not n.startswith("OTEL_")}
    assert not unknown, f"unknown settings in manifests: {sorted(unknown)}"
    assert {"SWITCHBOARD_NATS_URL", "SWITCHBOARD_JS_REPLICAS", "SWITCHBOARD_DATABASE_URL",
            "OTEL_EXPORTER_OTLP_ENDPOINT", "SWITCHBOARD_PUBLIC_URL", "OPENAI_API_KEY"} <= seen


def test_base_configmap_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    literals = _literals(_load(K8S / "base" / "kustomization.yaml")[0], "configMapGenerator", "switchboard-config")
    assert literals["SWITCHBOARD_NATS_URL"] == "nats://nats:4222"
    assert literals["SWITCHBOARD_JS_REPLICAS"] == "3"
    assert literals["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    for key, value in literals.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    for field in HTTP_PORTS.values():
        assert getattr(settings, field) == Settings.model_fields[field].default


def test_secret_keys_used_are_generated_in_dev() -> None:
    dev = _load(K8S / "overlays" / "dev" / "kustomization.yaml")[0]
    generated = set(_literals(dev, "secretGenerator", "switchboard-secrets"))
    for _, dep in _deployments():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "switchboard-secrets" and not ref.get("optional"):
                    assert ref["key"] in generated, f"dev overlay lacks secret key {ref['key']}"


def _secret_env(deployment: str) -> dict[str, str]:
    """``{env var: switchboard-secrets key}`` of a deployment's first container."""
    container = _deployment(deployment)["spec"]["template"]["spec"]["containers"][0]
    return {env["name"]: env["valueFrom"]["secretKeyRef"]["key"] for env in container.get("env", [])
            if env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "switchboard-secrets"}


def test_keys_shared_across_pods_come_from_the_secret() -> None:
    # a key generated per pod would break: browser tokens across gateway replicas, checkpoints across recorder
    # restarts, keypad captures sealed by the session and opened by the tool worker
    assert _secret_env("gateway")["SWITCHBOARD_TOKEN_SECRET"] == "token-secret"
    assert _secret_env("recorder")["SWITCHBOARD_AUDIT_KEY"] == "audit-key"
    assert _secret_env("recorder")["SWITCHBOARD_ARCHIVE_KEY"] == "archive-key"
    assert _secret_env("session")["SWITCHBOARD_CAPTURE_KEY"] == _secret_env("tools")["SWITCHBOARD_CAPTURE_KEY"]


def test_localmodel_component_points_the_session_at_the_local_model() -> None:
    comp = _load(K8S / "components" / "localmodel" / "kustomization.yaml")[0]
    url = _literals(comp, "configMapGenerator", "switchboard-config")["SWITCHBOARD_REALTIME_URL"]
    assert url.startswith(f"ws://localmodel:{Settings.model_fields['localmodel_port'].default}/v1/realtime")


def test_nats_values_give_a_three_node_jetstream_file_store_with_large_payloads() -> None:
    values = _load(INFRA / "nats" / "values.yaml")[0]
    config = values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    assert config["jetstream"]["enabled"] is True and config["jetstream"]["fileStore"]["enabled"] is True
    assert config["merge"]["max_payload"] >= 1 << 20
    base = _literals(_load(K8S / "base" / "kustomization.yaml")[0], "configMapGenerator", "switchboard-config")
    assert int(base["SWITCHBOARD_JS_REPLICAS"]) <= config["cluster"]["replicas"]
    assert base["SWITCHBOARD_NATS_URL"].endswith(f"{values['fullnameOverride']}:4222")


def test_keda_scales_existing_deployments_on_metrics_the_code_defines() -> None:
    objs = [d for _, d in _k8s_objects() if d["kind"] == "ScaledObject"]
    assert {o["spec"]["scaleTargetRef"]["name"] for o in objs} == {"session", "tools"}
    queries = " ".join(t["metadata"]["query"] for o in objs for t in o["spec"]["triggers"])
    for instrument in (metrics.ACTIVE_CALLS, metrics.TOOL_ROUND_TRIP):
        name = getattr(instrument, "name", None) or getattr(instrument, "_name")  # noqa: B009 (proxy instruments)
        prom_name = str(name).replace(".", "_")
        assert prom_name in queries, f"{prom_name} not used by any ScaledObject"


# --- AsyncAPI ----------------------------------------------------------------------------------------


@cache
def _asyncapi() -> Doc:
    doc = yaml.safe_load(ASYNCAPI.read_text())
    assert isinstance(doc, dict)
    return doc


def _resolve(ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = _asyncapi()
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _validator(schema: Any) -> jsonschema.Draft7Validator:
    registry: Registry[Any] = Registry().with_resource(
        "urn:switchboard:asyncapi", Resource.from_contents(_asyncapi(), default_specification=DRAFT7))
    if isinstance(schema, dict) and "$ref" in schema:
        schema = {"$ref": "urn:switchboard:asyncapi" + schema["$ref"]}
    return jsonschema.Draft7Validator(schema, registry=registry)


def _message(ref_or_msg: Any) -> Doc:
    msg = _resolve(ref_or_msg["$ref"]) if "$ref" in ref_or_msg else ref_or_msg
    return msg if "$ref" not in msg else _message(msg)


def _address_regex(channel: Doc) -> re.Pattern[str]:
    address = channel["address"]
    pattern = re.escape(address)
    for name, param in channel.get("parameters", {}).items():
        param = _resolve(param["$ref"]) if "$ref" in param else param
        if "enum" in param:
            part = "(?:" + "|".join(re.escape(v) for v in param["enum"]) + ")"
        else:
            part = "(?:" + param["x-pattern"] + ")"
        pattern = pattern.replace(re.escape("{" + name + "}"), part)
    return re.compile(pattern)


def _nats_match(filter_subject: str, subject: str) -> bool:
    f, s = filter_subject.split("."), subject.split(".")
    for i, token in enumerate(f):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(f) == len(s)


def test_asyncapi_is_3_0_and_every_reference_resolves() -> None:
    doc = _asyncapi()
    assert re.fullmatch(r"3\.0\.\d+", str(doc["asyncapi"]))
    for ref in set(_refs(doc)):
        assert _resolve(ref) is not None, ref
    for name, channel in doc["channels"].items():
        placeholders = set(re.findall(r"{(\w+)}", channel["address"] or ""))
        assert placeholders == set(channel.get("parameters", {})), f"channel {name}: parameters != placeholders"
        assert channel["x-switchboard-stream"] in {s.name for s in subjects.STREAMS} | {"none"}
    for op_id, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), op_id
        channel_ref = op["channel"]["$ref"]
        _resolve(channel_ref)
        for msg in op.get("messages", []):
            assert msg["$ref"].startswith(channel_ref + "/messages/"), f"{op_id}: message not in its channel"


def test_asyncapi_uses_the_parameter_names_of_the_brief() -> None:
    params = {p for c in _asyncapi()["channels"].values() for p in c.get("parameters", {})}
    assert params == {"callId", "eventType", "verb", "toolName"}


def test_asyncapi_schemas_are_valid_and_examples_match_them() -> None:
    doc = _asyncapi()
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft7Validator.check_schema(schema)
        assert name
    checked = 0
    for name, msg in doc["components"]["messages"].items():
        for example in msg.get("examples", []):
            _validator(msg["payload"]).validate(example["payload"])
            checked += 1
        assert "headers" in msg, f"message {name} documents no headers"
    assert checked >= 20


def test_asyncapi_channels_match_the_subject_builders_and_streams() -> None:
    cid = subjects.new_call_id()
    built = {
        "callStarted": [subjects.call_started(cid)],
        "callAudioIn": [subjects.call_audio_in(cid)],
        "carrierMark": [subjects.carrier_mark(cid)],
        "carrierDtmf": [subjects.carrier_dtmf(cid)],
        "carrierError": [subjects.carrier_error(cid)],
        "callKeypad": [subjects.call_keypad(cid)],
        "carrierDetached": [subjects.carrier_detached(cid)],
        "carrierResumed": [subjects.carrier_resumed(cid)],
        "carrierAmd": [subjects.carrier_amd(cid)],
        "command": [subjects.command(cid, v)
                    for v in ("clear", "hangup", "transfer", "play", "capture", "replay", "dtmf")],
        "sessionEvent": [subjects.session_event(cid, e)
                         for e in ("model_connected", "state_changed", "disclosure", "capture", "summary", "error")]
                        + [subjects.session_disclosure(cid)],
        "callEnded": [subjects.call_ended(cid)],
        "callErased": [subjects.call_erased(cid)],
        "rtClient": [subjects.rt_client(cid, t) for t in ("session.update", "input_audio_buffer.append")],
        "rtServer": [subjects.rt_server(cid, t) for t in ("response.output_audio.delta", "error")],
        "toolRequest": [subjects.tool("book_appointment")],
        "otelSpans": [subjects.OTEL_SPANS],
    }
    channels = _asyncapi()["channels"]
    assert set(built) | {"toolReply"} == set(channels)
    streams = {s.name: s for s in subjects.STREAMS}
    for name, subs in built.items():
        channel = channels[name]
        regex = _address_regex(channel)
        stream = channel["x-switchboard-stream"]
        for subject in subs:
            assert regex.fullmatch(subject), f"{subject} does not match channel {name} ({channel['address']})"
            captured_by = {s.name for s in subjects.STREAMS if any(_nats_match(f, subject) for f in s.subjects)}
            expected = set() if stream == "none" else {streams[stream].name}
            assert captured_by == expected, f"{subject}: captured by {captured_by}, catalogue says {stream}"
    # a different channel's subject must not match (the patterns are not catch-alls)
    assert not _address_regex(channels["callStarted"]).fullmatch(subjects.call_ended(cid))
    assert not _address_regex(channels["command"]).fullmatch(f"call.{cid}.command.explode")


def test_asyncapi_describes_the_realtime_events_we_rely_on() -> None:
    def names(channel: str) -> set[str]:
        return {_message(m)["name"] for m in _asyncapi()["channels"][channel]["messages"].values()}

    assert {"session.update", "input_audio_buffer.append", "response.create", "conversation.item.create",
            "conversation.item.truncate"} <= names("rtClient")
    assert {"response.output_audio.delta", "response.done", "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped", "response.function_call_arguments.done",
            "response.output_item.done", "error"} <= names("rtServer")


def test_asyncapi_rejects_a_malformed_event() -> None:
    msg = _message(_asyncapi()["channels"]["rtServer"]["messages"]["responseOutputAudioDelta"])
    with pytest.raises(jsonschema.ValidationError):
        _validator(msg["payload"]).validate({"type": "response.output_audio.delta", "delta": "AAAA"})
    mark = _message(_asyncapi()["channels"]["carrierMark"]["messages"]["carrierMark"])
    with pytest.raises(jsonschema.ValidationError):
        _validator(mark["payload"]).validate({"name": "m1", "played_bytes": -1, "cleared": False})


# --- docs --------------------------------------------------------------------------------------------


def test_operations_doc_lists_every_setting_and_architecture_has_diagrams() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    for name in sorted(_known_env()):
        assert f"`{name}`" in ops, f"docs/operations.md does not document {name}"
    arch = (ROOT / "docs" / "architecture.md").read_text()
    assert arch.count("```mermaid") >= 3
    for stream in subjects.STREAMS:
        assert stream.name in arch
