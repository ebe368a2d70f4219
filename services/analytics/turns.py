"""First-response latency without consuming the model's audio: the first ``response.output_audio.delta``
after a ``speech_stopped`` is looked up in the RT stream instead of being delivered.

The first-audio figure (:class:`shared.callfigures.FirstAudio`) needs, per caller turn, only the first server
``response.output_audio.delta`` after the turn's ``input_audio_buffer.speech_stopped`` — yet the deltas are
most of what RT carries besides caller audio (one per ~20 ms of reply). So the analytics RT consumer does not
ask for them; per open turn it asks JetStream for the one delta it needs: ``STREAM.MSG.GET`` with
``next_by_subj`` (``rt.<call>.server.response.output_audio.delta``, first sequence after the turn's
``speech_stopped``), read from the stream leader, so a message it returns is final and every message with a
lower sequence is stored too.

A turn's state (``CallFigures.state``): ``stopped_ns`` (its ``Switchboard-Ts``) and ``stopped_seq`` (its RT
stream sequence; absent in state written before this lookup existed: then the RT position the state was
committed at stands in, as every delta up to it had been applied). Rules (:func:`resolve`), all by stream
sequence, so the figure is the one the fold over every event gives:

- the first delta ``d`` after the turn exists and the call's next ``speech_stopped`` (``before``, when the
  caller already knows it; else looked up the same way) is not below ``d``: the turn closes with the figure
  ``FirstAudio(stopped_ns).observe(OUTPUT_AUDIO, ts(d))`` (None when ``ts(d)`` < ``stopped_ns``), stored under
  ``d``'s sequence;
- a ``speech_stopped`` comes first: the turn gives no figure (the fold replaces it when it applies that
  event);
- no delta yet: the turn stays open; the consumer asks again later (:data:`RETRY_S`), and stops asking
  :data:`SETTLE_S` after the call's end (a session publishes nothing for a call that long after it ended).
"""

from __future__ import annotations

from typing import Protocol

import nats.js.errors
from nats.js import JetStreamContext

from services.analytics.kpis import CallFigures
from shared import subjects
from shared.bus import Headers
from shared.callfigures import OUTPUT_AUDIO, FirstAudio

__all__ = ["RETRY_S", "SETTLE_S", "FirstMessage", "Lookup", "StreamLookup", "open_turn", "resolve"]

RETRY_S = 0.25
"""Seconds between two lookups for the turns still waiting for audio."""
SETTLE_S = 60.0
"""Seconds after a call's end (``ended_ns``) after which its open turn is no longer looked up."""

FirstMessage = tuple[int, int]
"""``(stream sequence, Switchboard-Ts ns)`` of a looked-up RT message."""


class Lookup(Protocol):
    """The first RT message of a subject after a sequence (see :class:`StreamLookup`)."""

    async def first_after(self, subject: str, seq: int) -> FirstMessage | None:
        """``(seq, ts_ns)`` of the first message on ``subject`` with a sequence above ``seq``, None if none yet."""
        ...


class StreamLookup:
    """:class:`Lookup` over a JetStream context (``STREAM.MSG.GET`` on RT, nats-py's public ``get_msg``)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def first_after(self, subject: str, seq: int) -> FirstMessage | None:
        """``(seq, ts_ns)`` of the first RT message on ``subject`` with a sequence above ``seq``; None when the
        stream holds none (yet). ``ts_ns`` is ``Switchboard-Ts``, else the storage time.

        Raises:
            nats.errors.TimeoutError, nats.js.errors.APIError: the request failed (the batch is retried).
        """
        try:
            raw = await self.js.get_msg(subjects.RT_STREAM.name, seq=seq + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return None
        ts = (raw.headers or {}).get(Headers.TS, "")
        ts_ns = int(ts) if ts.isdigit() else int(raw.time.timestamp() * 1e9) if raw.time else 0
        return int(raw.seq or 0), ts_ns


def open_turn(fig: CallFigures, position: int) -> tuple[int, int] | None:
    """``(stopped_seq, stopped_ns)`` of ``fig``'s turn waiting for audio, or None; ``position`` stands in for a
    ``stopped_seq`` missing from older state (see the module docstring)."""
    stopped = fig.state.get("stopped_ns")
    if not isinstance(stopped, int):
        return None
    seq = fig.state.get("stopped_seq")
    return (seq if isinstance(seq, int) else position), stopped


async def resolve(fig: CallFigures, lookup: Lookup, position: int,
                  before: int | None = None) -> tuple[int, float | None] | None:
    """Close ``fig``'s open turn if its first audio is in the stream (rules in the module docstring).

    ``before``: the sequence of the call's next ``speech_stopped`` when the caller knows it. Returns
    ``(delta sequence, latency ms or None)`` when the turn closed (its state is cleared), else None.
    """
    turn = open_turn(fig, position)
    if turn is None:
        return None
    after, stopped_ns = turn
    delta = await lookup.first_after(subjects.rt_server(fig.call_id, OUTPUT_AUDIO[1]), after)
    if delta is None:
        return None
    if before is None:
        nxt = await lookup.first_after(subjects.rt_server(fig.call_id, "input_audio_buffer.speech_stopped"), after)
        before = nxt[0] if nxt is not None else None
    if before is not None and before < delta[0]:
        return None
    _, latency = FirstAudio(stopped_ns).observe(OUTPUT_AUDIO, delta[1])
    fig.state.pop("stopped_ns", None)
    fig.state.pop("stopped_seq", None)
    return delta[0], latency
