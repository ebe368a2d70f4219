"""Re-reading a range of stream sequences that the durable consumer did not deliver.

A short-lived ephemeral pull consumer (nats-py ``add_consumer`` + ``pull_subscribe_bind`` + ``fetch``; ack
policy none, memory storage, removed afterwards and by the server after 30 s of inactivity) starts at the first
sequence wanted. It delivers exactly the messages the stream still holds, in stream order, with the same
``$JS.ACK`` reply subject as a normal delivery, so :meth:`Incoming.from_msg` gives byte-identical records
(storage time to the nanosecond). Sequences it skips are no longer in the stream.

Consumer semantics (``DeliverByStartSequence``, ``AckNone``, ``InactiveThreshold``, ``MemoryStorage``):
https://docs.nats.io/nats-concepts/jetstream/consumers; the ack reply subject's layout is the one
:meth:`Incoming.from_msg` parses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.recorder.records import Incoming

__all__ = ["reread"]

log = logging.getLogger(__name__)


async def reread(js: JetStreamContext, stream: str, first_seq: int, last_seq: int, *, batch: int = 256,
                 timeout: float = 5.0) -> AsyncIterator[Incoming]:
    """Yield the messages ``stream`` still holds with sequences ``first_seq..last_seq``, ascending.

    Stops after ``last_seq`` or once the consumer has nothing more pending. Raises ``TimeoutError`` when
    messages are pending but none arrives within ``timeout`` seconds, and nats-py's errors when the stream
    cannot be reached — the caller retries then (nothing may be treated as gone on a failed read).
    """
    info = await js.add_consumer(stream, ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first_seq, ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0, mem_storage=True, num_replicas=1))
    name = info.name
    psub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    try:
        expected = first_seq
        while expected <= last_seq:
            try:
                msgs = await psub.fetch(min(batch, last_seq - expected + 2), timeout=timeout)
            except TimeoutError:
                if not (await psub.consumer_info()).num_pending:
                    return  # the stream holds nothing more
                raise
            for msg in msgs:
                got = Incoming.from_msg(msg)
                if got.stream_seq > last_seq:
                    return
                yield got
                expected = got.stream_seq + 1
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, name)
