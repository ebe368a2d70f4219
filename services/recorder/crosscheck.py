"""Cross-checking one call's archive against JetStream (``switchboard audit verify``).

Per stream (CALLS, RT) a short-lived ephemeral consumer filtered on the call's subjects (``call.<id>.>``,
``rt.<id>.>``; headers only, ack policy none, memory storage, deleted afterwards) lists the stream sequence and
subject of every message of the call the stream still holds. Compared with the archived stream sequences it
gives the count and last sequence on both sides and names every message that is in the stream but not in the
archive. Messages archived but gone from the stream (expired after ``SWITCHBOARD_JS_MAX_AGE``) are normal and
only counted. Consumer options (``FilterSubject``, ``HeadersOnly``, ``AckNone``; ``num_pending`` at creation is
the number of matching messages): https://docs.nats.io/nats-concepts/jetstream/consumers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.recorder.records import Incoming
from shared import subjects

__all__ = ["StreamCheck", "crosscheck", "stream_messages"]


@dataclass(slots=True)
class StreamCheck:
    """One stream's view of one call against the archive."""

    stream: str
    in_stream: int
    """Messages of the call the stream holds now."""
    stream_last_seq: int | None
    archived: int
    """Archived events of the call from this stream."""
    archived_last_seq: int | None
    missing: list[tuple[int, str]] = field(default_factory=list)
    """``(stream_seq, subject)`` of messages in the stream and not in the archive, ascending."""

    @property
    def ok(self) -> bool:
        """True when everything the stream holds for the call is archived."""
        return not self.missing

    def describe(self) -> list[str]:
        """Human-readable lines: the counts, then one line per missing message."""
        lines = [f"{self.stream}: {self.in_stream} message(s) in JetStream (last seq {self.stream_last_seq}), "
                 f"{self.archived} archived (last seq {self.archived_last_seq})"]
        lines += [f"{self.stream} stream_seq {seq} ({subject}) is in JetStream but not in the archive"
                  for seq, subject in self.missing]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON shape for ``audit verify --json``."""
        return {"stream": self.stream, "ok": self.ok, "in_stream": self.in_stream,
                "stream_last_seq": self.stream_last_seq, "archived": self.archived,
                "archived_last_seq": self.archived_last_seq,
                "missing": [{"stream_seq": seq, "subject": subject} for seq, subject in self.missing]}


async def stream_messages(js: JetStreamContext, stream: str, filter_subject: str, *, batch: int = 1000,
                          timeout: float = 5.0) -> list[tuple[int, str]]:
    """``(stream_seq, subject)`` of every message on ``filter_subject`` that ``stream`` holds, ascending.

    Raises nats-py's errors (``TimeoutError`` when announced messages do not arrive within ``timeout`` s).
    """
    info = await js.add_consumer(stream, ConsumerConfig(
        filter_subject=filter_subject, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
        headers_only=True, inactive_threshold=30.0, mem_storage=True, num_replicas=1))
    psub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
    out: list[tuple[int, str]] = []
    try:
        want = int(info.num_pending or 0)
        while len(out) < want:
            for msg in await psub.fetch(min(batch, want - len(out)), timeout=timeout):
                got = Incoming.from_msg(msg)
                out.append((got.stream_seq, got.subject))
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)
    return sorted(out)


async def crosscheck(js: JetStreamContext, call_id: str, archived: Mapping[str, Collection[int]]) -> list[StreamCheck]:
    """Compare the CALLS and RT streams' messages of ``call_id`` with ``archived`` (stream name → archived
    stream sequences of the call). Raises nats-py's errors when JetStream cannot be read."""
    checks = []
    for spec, filter_subject in ((subjects.CALLS_STREAM, subjects.call_all(call_id)),
                                 (subjects.RT_STREAM, subjects.rt_all(call_id))):
        held = await stream_messages(js, spec.name, filter_subject)
        have = set(archived.get(spec.name, ()))
        checks.append(StreamCheck(
            spec.name, len(held), held[-1][0] if held else None, len(have), max(have) if have else None,
            [(seq, subject) for seq, subject in held if seq not in have]))
    return checks
