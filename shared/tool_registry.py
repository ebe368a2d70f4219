"""The tool registry: which tools exist, their JSON Schema, ``timeout_ms`` and ``background`` flag.

Stored in the JetStream key-value bucket ``switchboard_tools`` (key = tool name, value = the JSON of a
:class:`ToolSpec`). Tool workers :func:`publish` their specs at start-up (idempotent: same spec, same value);
the session service reads the whole bucket with :func:`load` when it builds a model session's tool list. A KV
bucket (rather than ``$SRV.INFO`` metadata) gives one readable place that survives worker restarts, keeps
history and can be watched.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

__all__ = ["BUCKET", "ToolSpec", "load", "publish"]

BUCKET = "switchboard_tools"


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the model and the session see it.

    Attributes:
        name: the tool name (``[A-Za-z0-9_-]``), also its subject ``tools.<name>``.
        description: what the model reads to decide when to call it.
        parameters: JSON Schema (draft 2020-12) of the arguments object.
        timeout_ms: the deadline the session gives a request (ms).
        background: True → the session answers the model at once with a "started" output and adds the
            result later as a new item.
        idempotent: True → a retry with the same ``tool_call_id`` returns the stored first result.
        control: True for call-control tools (``end_call``, ``transfer_to_human``) whose replies carry a
            ``control`` directive.
    """

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_ms: int = 5000
    background: bool = False
    idempotent: bool = True
    control: bool = False

    def realtime_tool(self) -> dict[str, Any]:
        """The Realtime GA session tool object (``tools`` of https://platform.openai.com/docs/api-reference/realtime-client-events/session/update)."""
        return {"type": "function", "name": self.name, "description": self.description,
                "parameters": self.parameters}

    def to_json(self) -> bytes:
        """Compact JSON of every field."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ToolSpec:
        """Parse a registry value.

        Raises:
            ValueError: not a JSON object with at least ``name`` and ``description``.
        """
        raw = json.loads(data)
        if not isinstance(raw, dict) or "name" not in raw or "description" not in raw:
            raise ValueError("tool spec needs name and description")
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


async def _bucket(js: JetStreamContext, replicas: int = 1) -> Any:
    try:
        return await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=5, storage=StorageType.FILE,
                                                        replicas=replicas,
                                                        description="Switchboard tool registry"))


async def publish(js: JetStreamContext, specs: list[ToolSpec], *, replicas: int = 1) -> None:
    """Put each spec into the registry (skipped when the stored value is already identical)."""
    kv = await _bucket(js, replicas)
    for spec in specs:
        value = spec.to_json()
        try:
            entry = await kv.get(spec.name)
            if entry.value == value:
                continue
        except nats.js.errors.KeyNotFoundError:
            pass
        await kv.put(spec.name, value)


async def load(js: JetStreamContext) -> dict[str, ToolSpec]:
    """Every tool in the registry by name (empty when no worker has registered yet)."""
    kv = await _bucket(js)
    # The keys come from the KV stream's per-subject state, which is exact. nats-py's ``kv.keys()`` walks a
    # watcher that can stop before the last key (seen: a registry of 6 tools loaded as 5).
    prefix = f"$KV.{BUCKET}."
    info = await js.stream_info(f"KV_{BUCKET}", subjects_filter=f"{prefix}>")
    keys = sorted(subject[len(prefix):] for subject in (info.state.subjects or {}))

    async def get(key: str) -> bytes | None:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # deleted since the stream state was read
            return None
        value: bytes | None = entry.value
        return value

    specs: dict[str, ToolSpec] = {}
    for value in await asyncio.gather(*(get(key) for key in keys)):  # one round trip, not one per tool
        if value:
            spec = ToolSpec.from_json(value)
            specs[spec.name] = spec
    return specs
