"""NATS authentication and per-service authorization with nats-server's own mechanisms (nkey users).

Every service connects as its own nkey user (an Ed25519 key pair, https://docs.nats.io/running-a-nats-service/
configuration/securing_nats/auth_intro/nkey_auth) whose publish/subscribe permissions
(https://docs.nats.io/running-a-nats-service/configuration/securing_nats/authorization) follow the subject table
of docs/architecture.md (docs/security.md); :data:`PERMISSIONS` is that table, rendered both into the embedded
server's configuration
(:func:`server_config`) and, by hand, into ``infra/nats/values.yaml`` (``tests/unit/test_natsauth.py`` checks
they agree). The ``operator`` identity has no permission block: full rights, the only one that may delete or
purge streams or update their configuration. Anonymous clients are refused: once users are configured the
server authenticates every connection.

Request/reply inboxes are per identity (``_INBOX.<identity>.``, nats-py's ``inbox_prefix``), so a service can
only subscribe to its own replies, never to another service's JetStream fetches. Answering a request (nats.micro
endpoints, readiness) uses ``allow_responses``: a reply to a message the service received.

Files (``switchboard up``, :func:`ensure_credentials`): ``<data dir>/auth/<identity>.nk`` (the nkey seed) and
``<data dir>/auth/nats.conf``, all mode 0600 in a 0700 directory, created on first start and kept after.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from shared import subjects
from shared.tool_registry import BUCKET as TOOLS_BUCKET

__all__ = ["ACCOUNT", "BROWSER_TOKENS_BUCKET", "IDENTITIES", "PERMISSIONS", "SERVICES", "Permissions",
           "auth_dir", "client_options", "ensure_credentials", "ensure_secret", "inbox_prefix", "new_user_seed",
           "prepare_server", "public_key", "read_seed",
           "server_config", "write_secret"]

ACCOUNT = "SWITCHBOARD"
"""The NATS account every Switchboard user belongs to (JetStream enabled in it)."""
BROWSER_TOKENS_BUCKET = "switchboard_browser_tokens"
"""KV bucket of used browser-token nonces (single use across gateway replicas)."""


@dataclass(frozen=True)
class Permissions:
    """One user's permissions: subjects it may publish to and subscribe to (NATS wildcards), and whether it may
    answer requests it received (``allow_responses``). Anything not allowed is refused by the server."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True

    def as_config(self) -> dict[str, Any]:
        """The ``permissions`` block of a nats-server user."""
        block: dict[str, Any] = {
            "publish": {"allow": list(self.publish), "deny": list(DENY_ALWAYS)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            block["allow_responses"] = True
        return block


DENY_ALWAYS = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>",
               "$JS.API.STREAM.UPDATE.>")
"""Refused to every service whatever its allow list says: only the operator deletes, purges or reconfigures."""

def inbox_prefix(identity: str) -> str:
    """``_INBOX.<identity>``: where that identity's replies arrive (the only inbox it may subscribe to)."""
    return f"_INBOX.{identity}"


_CALL_STREAMS = tuple(spec.name for spec in subjects.STREAMS)


def _create(*streams: str) -> list[str]:
    return [f"$JS.API.STREAM.CREATE.{s}" for s in streams]


def _read(*streams: str) -> list[str]:
    """JetStream API subjects to read ``streams``: consumers (ephemeral or durable), fetches, acks, gets."""
    out: list[str] = []
    for s in streams:
        out += [f"$JS.API.CONSUMER.CREATE.{s}", f"$JS.API.CONSUMER.CREATE.{s}.>",
                f"$JS.API.CONSUMER.DURABLE.CREATE.{s}.*", f"$JS.API.CONSUMER.INFO.{s}.*",
                f"$JS.API.CONSUMER.DELETE.{s}.*", f"$JS.API.CONSUMER.MSG.NEXT.{s}.*",
                f"$JS.API.STREAM.MSG.GET.{s}", f"$JS.API.DIRECT.GET.{s}", f"$JS.API.DIRECT.GET.{s}.>",
                f"$JS.ACK.{s}.>", f"$JS.FC.{s}.>"]
    return out


def _kv_write(bucket: str) -> list[str]:
    return [f"$KV.{bucket}.>", *_create(f"KV_{bucket}"), *_read(f"KV_{bucket}")]


def _common(name: str) -> tuple[list[str], list[str]]:
    """What every service needs: stream info and idempotent creation of CALLS/RT/TRACES, spans, micro, inbox."""
    publish = ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", *_create(*_CALL_STREAMS), subjects.OTEL_SPANS]
    subscribe = ["$SRV.>", f"{inbox_prefix(name)}.>", subjects.ready(name)]
    return publish, subscribe


def _service(name: str, publish: list[str], subscribe: list[str]) -> Permissions:
    pub, sub = _common(name)
    return Permissions(tuple(pub + publish), tuple(sub + subscribe))


AUDIT_STREAM = "AUDIT"

PERMISSIONS: dict[str, Permissions | None] = {
    "operator": None,
    "gateway": _service(
        "gateway",
        ["call.*.started", "call.*.audio.in", "call.*.keypad", "call.*.carrier.>", "call.*.ended",
         *_kv_write(BROWSER_TOKENS_BUCKET),
         # /twilio/voice?resume=<id>: has the call started / ended (last message by subject; services/gateway/app.py)
         "$JS.API.STREAM.MSG.GET.CALLS",
         # does a session own the call (session_lost; services/gateway/call.py)
         f"$JS.API.STREAM.MSG.GET.KV_{subjects.CALL_OWNERS_BUCKET}",
         f"$JS.API.DIRECT.GET.KV_{subjects.CALL_OWNERS_BUCKET}.>"],
        ["call.*.command.>", "rt.*.server.response.output_audio.delta", "rt.*.server.session.updated",
         # the browser call's live transcript (services/gateway/browser.py)
         "rt.*.server.conversation.item.input_audio_transcription.completed",
         "rt.*.server.response.output_audio_transcript.delta", "rt.*.server.response.output_audio_transcript.done",
         "rt.*.server.response.function_call_arguments.done",
         # an OpenAI SIP call: did a session attach, or did it end (services/gateway/openai_sip.py)
         "call.*.session.model_connected", "call.*.ended"],
    ),
    "session": _service(
        "session",
        ["rt.>", "call.*.command.>", "call.*.session.>", "tools.>", *_read("CALLS", "RT", f"KV_{TOOLS_BUCKET}"),
         *_kv_write(subjects.CALL_OWNERS_BUCKET),
         # an OpenAI SIP call has no gateway leg: its session ends it (services/session/sideband.py)
         "call.*.ended"],
        ["call.*.started", "call.*.audio.in", "call.*.keypad", "call.*.carrier.>", "call.*.ended",
         # handover between instances (services/session/service.py)
         "call.*.session.handover", "call.*.session.model_connected"],
    ),
    "tools": _service("tools", _kv_write(TOOLS_BUCKET), ["tools.>"]),
    "recorder": _service(
        "recorder",
        ["audit.>", "call.*.erased", *_create(AUDIT_STREAM), *_read(*_CALL_STREAMS, AUDIT_STREAM),
         *_kv_write(subjects.RECORDER_LEASE_BUCKET)],
        ["rt.>", "call.*.started", "call.*.ended", "call.*.erased", "call.*.carrier.>", "call.*.command.>",
         "call.*.session.>", subjects.OTEL_SPANS],
    ),
    "analytics": _service("analytics", _read("CALLS", "RT"), [subjects.webhook_status()]),
}
"""Identity → permissions (None: the operator, full rights). Source: the subject table of docs/architecture.md
(docs/security.md)."""

IDENTITIES = tuple(PERMISSIONS)
SERVICES = tuple(name for name, perms in PERMISSIONS.items() if perms is not None)


def new_user_seed() -> bytes:
    """A fresh nkey user seed (``SU…``, 32 random bytes, nkeys encoding)."""
    return bytes(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes | str) -> str:
    """The public nkey (``U…``) of a user seed."""
    raw = seed.encode() if isinstance(seed, str) else seed
    return str(nkeys.from_seed(bytearray(raw.strip())).public_key.decode())


def auth_dir(data_dir: Path) -> Path:
    """``<data dir>/auth``: seeds, secrets and the server configuration."""
    return data_dir / "auth"


def write_secret(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` with mode 0600 (created so; never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)
    os.chmod(path, 0o600)


def ensure_credentials(directory: Path) -> dict[str, Path]:
    """Create ``<identity>.nk`` (0600) in ``directory`` for every identity that has none; return their paths.

    Existing seeds are kept (delete a file and restart ``switchboard up`` to rotate that identity).
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    paths: dict[str, Path] = {}
    for identity in IDENTITIES:
        path = directory / f"{identity}.nk"
        if not path.is_file():
            write_secret(path, new_user_seed() + b"\n")
        paths[identity] = path
    return paths


def server_config(seeds: dict[str, Path]) -> str:
    """The nats-server configuration (its own format, JSON values) for the users whose seed files are given.

    One account, :data:`ACCOUNT`, with JetStream; each user is its public nkey plus :data:`PERMISSIONS`.
    """
    users = []
    for identity, path in seeds.items():
        user: dict[str, Any] = {"nkey": public_key(path.read_bytes())}
        perms = PERMISSIONS[identity]
        if perms is not None:
            user["permissions"] = perms.as_config()
        users.append(user)
    accounts = {ACCOUNT: {"jetstream": "enabled", "users": users}}
    return f"# generated by switchboard up (shared/natsauth.py)\naccounts: {json.dumps(accounts, indent=2)}\n"


def _seed_option(value: str) -> dict[str, Any]:
    if value.strip().startswith("SU") and not Path(value).exists():  # the seed itself, else a file
        return {"nkeys_seed_str": value.strip()}
    return {"nkeys_seed": value}


def client_options(*, creds: str | Path | None = None, nkey_seed: str | None = None,
                   tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                   tls_key: str | Path | None = None, identity: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``: credentials, TLS and the identity's inbox prefix.

    ``creds`` is a ``.creds`` file (decentralized JWT auth); ``nkey_seed`` a seed (``SU…``) or a file holding
    one; ``tls_ca`` a CA bundle (turns TLS on, server verified), ``tls_cert``/``tls_key`` a client certificate.
    """
    options: dict[str, Any] = {}
    if creds:
        options["user_credentials"] = str(creds)
    elif nkey_seed:
        options.update(_seed_option(str(nkey_seed)))
    if tls_ca or tls_cert:
        context = ssl.create_default_context(cafile=str(tls_ca) if tls_ca else None)
        if tls_cert:
            context.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
        options["tls"] = context
    if identity:
        options["inbox_prefix"] = inbox_prefix(identity)
    return options


def read_seed(value: str) -> bytes:
    """A seed given as ``SU…`` or as a file holding one."""
    if value.strip().startswith("SU") and not Path(value).exists():
        return value.strip().encode()
    return Path(value).read_bytes().strip()


def prepare_server(directory: Path, *, operator_seed: bytes | None = None) -> tuple[Path, dict[str, Path]]:
    """Seeds for every identity (kept once made) and a freshly rendered ``nats.conf`` (0600) in ``directory``.

    ``operator_seed`` (the caller's own ``SWITCHBOARD_NATS_NKEY_SEED``) becomes the operator identity, so whoever
    starts the system can operate it. Returns the configuration path and identity → seed file.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if operator_seed is not None and (not (directory / "operator.nk").is_file()
                                      or (directory / "operator.nk").read_bytes().strip() != operator_seed.strip()):
        public_key(operator_seed)  # raises on a malformed seed
        write_secret(directory / "operator.nk", operator_seed.strip() + b"\n")
    seeds = ensure_credentials(directory)
    config = directory / "nats.conf"
    write_secret(config, server_config(seeds).encode())
    return config, seeds


def ensure_secret(path: Path, nbytes: int = 32) -> str:
    """The hex secret in ``path``, made (``nbytes`` random bytes, 0600) when the file does not exist yet."""
    if not path.is_file():
        write_secret(path, secrets.token_hex(nbytes).encode() + b"\n")
    return path.read_text().strip()
