"""Per-call figures, defined once: first audio after end of speech, barge-in reaction, tool latency, cost.

The session measures these live (its own clock, at the moment it receives or sends an event), the recorder
and the analytics service derive them from archived events (the session's ``Switchboard-Ts`` publish stamps),
and ``switchboard demo`` from the events the recorder API returns. All of them feed the same folds below, so
a figure means the same thing everywhere. Each fold takes ``(direction, type)`` of an event (direction
``client``/``server`` for ``rt.<id>.*``, None for ``call.<id>.*``; types as in docs/events.asyncapi.yaml and
the Realtime GA reference, https://platform.openai.com/docs/api-reference/realtime-server-events) and a time
in ns on one clock per call; figures are in ms.

- **first audio** (:class:`FirstAudio`): server ``input_audio_buffer.speech_stopped`` → the next server
  ``response.output_audio.delta``; one value per caller turn. A turn whose reply has no audio before the next
  ``speech_stopped`` gives no value; audio without a ``speech_stopped`` before it (the greeting) gives none.
  A reply that first calls a tool includes the tool's time: it is what the caller waits.
- **barge-in reaction** (:class:`BargeInReaction`): server ``input_audio_buffer.speech_started`` → the first
  ``command.clear`` after it; at most one value per ``speech_started``.
- **tool latency** (:class:`ToolLatency`): server ``response.function_call_arguments.done`` → the client's
  ``conversation.item.create`` of the ``function_call_output`` with the same ``call_id``, rounded to 0.1 ms.
- **cost** (:class:`CallCost`): the summed ``response.done`` usage priced by :mod:`shared.pricing` for the
  call's model — the client's ``session.update`` model, else ``session.created``'s or
  ``session.model_connected``'s, whichever came last; 0 when ``session.model_connected`` said ``billed:
  false`` (the local model); None when the model is unpriced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.pricing import Usage, estimate_cost

__all__ = ["DEFAULT_MODEL", "BargeInReaction", "CallCost", "FirstAudio", "Kind", "ToolLatency", "round_ms",
           "tool_latency_ms"]

Kind = tuple[str | None, str]
"""``(direction, type)`` of an event: ``("server", "response.done")``, ``(None, "command.clear")``."""

DEFAULT_MODEL = "gpt-realtime"
"""The model a call is priced at when no event named one (the session's default, design.md)."""

SPEECH_STOPPED: Kind = ("server", "input_audio_buffer.speech_stopped")
SPEECH_STARTED: Kind = ("server", "input_audio_buffer.speech_started")
OUTPUT_AUDIO: Kind = ("server", "response.output_audio.delta")
CLEAR: Kind = (None, "command.clear")
FUNCTION_CALL: Kind = ("server", "response.function_call_arguments.done")
ITEM_CREATE: Kind = ("client", "conversation.item.create")
RESPONSE_DONE: Kind = ("server", "response.done")
SESSION_UPDATE: Kind = ("client", "session.update")
SESSION_CREATED: Kind = ("server", "session.created")
MODEL_CONNECTED: Kind = (None, "session.model_connected")


def round_ms(ns: int) -> float:
    """``ns`` nanoseconds as milliseconds rounded to 0.1 ms."""
    return round(ns / 1e6, 1)


def tool_latency_ms(requested_ns: int, completed_ns: int) -> float:
    """Tool latency (module docstring): function call requested → its output sent, ms rounded to 0.1."""
    return round_ms(completed_ns - requested_ns)


@dataclass(frozen=True, slots=True)
class FirstAudio:
    """End of caller speech → first model audio (ms), one value per caller turn (see the module docstring).

    ``stopped_ns`` is the open turn's ``speech_stopped`` time (None: no turn waiting for audio); it is the
    whole state, so a consumer that persists state between events stores that one number.
    """

    stopped_ns: int | None = None

    def observe(self, kind: Kind, t_ns: int) -> tuple[FirstAudio, float | None]:
        """The state after one event at ``t_ns``, and the figure (ms, unrounded) when the event completes one."""
        if kind == SPEECH_STOPPED:
            return FirstAudio(t_ns), None
        if kind == OUTPUT_AUDIO and self.stopped_ns is not None:
            return FirstAudio(None), (t_ns - self.stopped_ns) / 1e6 if t_ns >= self.stopped_ns else None
        return self, None


@dataclass(frozen=True, slots=True)
class BargeInReaction:
    """Caller speech detected → ``command.clear`` (ms), at most one value per ``speech_started``.

    ``started_ns``: the last ``speech_started`` time; ``measured``: a clear after it was already counted.
    """

    started_ns: int | None = None
    measured: bool = False

    def observe(self, kind: Kind, t_ns: int) -> tuple[BargeInReaction, float | None]:
        """The state after one event at ``t_ns``, and the figure (ms, unrounded) on the first clear after
        speech."""
        if kind == SPEECH_STARTED:
            return BargeInReaction(t_ns), None
        if kind == CLEAR and self.started_ns is not None and not self.measured:
            return BargeInReaction(self.started_ns, True), (t_ns - self.started_ns) / 1e6
        return self, None


@dataclass(frozen=True, slots=True)
class ToolLatency:
    """Function call requested → its output sent (:func:`tool_latency_ms`), per Realtime ``call_id``.

    ``open``: the requested time (ns) of each call whose output has not been seen.
    """

    open: Mapping[str, int] = field(default_factory=dict)

    def requested(self, call_id: str, t_ns: int) -> ToolLatency:
        """The state after the model asked for ``call_id`` at ``t_ns`` (a repeated id keeps its first time)."""
        return self if call_id in self.open else ToolLatency({**self.open, call_id: t_ns})

    def completed(self, call_id: str, t_ns: int) -> tuple[ToolLatency, float | None]:
        """The state after the output of ``call_id`` was sent at ``t_ns``; the latency (None: unknown id)."""
        if call_id not in self.open:
            return self, None
        rest = {k: v for k, v in self.open.items() if k != call_id}
        return ToolLatency(rest), tool_latency_ms(self.open[call_id], t_ns)

    def observe(self, kind: Kind, body: Mapping[str, Any], t_ns: int) -> tuple[ToolLatency, float | None]:
        """The state after one event (its JSON ``body``), and the latency when a ``function_call_output``
        closes a call."""
        if kind == FUNCTION_CALL and body.get("call_id"):
            return self.requested(str(body["call_id"]), t_ns), None
        if kind == ITEM_CREATE:
            item = body.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                return self.completed(str(item.get("call_id")), t_ns)
        return self, None


@dataclass(frozen=True, slots=True)
class CallCost:
    """Usage, model and billing of one call, and its estimated cost (see the module docstring).

    Events may arrive with the Realtime (RT) and lifecycle (CALLS) streams interleaved in any order; the
    client's model wins whenever it is seen. ``usage`` is never modified in place (each step copies it).
    """

    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    billed: bool = True
    model_from_client: bool = False

    def observe(self, kind: Kind, body: Mapping[str, Any]) -> CallCost:
        """The state after one event's JSON ``body``."""
        if kind == RESPONSE_DONE:
            response = body.get("response")
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                usage = replace(self.usage)
                usage.add(response["usage"])
                return replace(self, usage=usage)
        elif kind in (SESSION_UPDATE, SESSION_CREATED):
            session = body.get("session")
            if isinstance(session, dict) and isinstance(session.get("model"), str):
                return self._model(session["model"], client=kind == SESSION_UPDATE)
        elif kind == MODEL_CONNECTED:
            state = replace(self, billed=False) if body.get("billed") is False else self
            return state._model(body["model"], client=False) if isinstance(body.get("model"), str) else state
        return self

    def _model(self, model: str, *, client: bool) -> CallCost:
        if client or not self.model_from_client:
            return replace(self, model=model, model_from_client=self.model_from_client or client)
        return self

    @property
    def cost_usd(self) -> float | None:
        """Estimated USD (0.0 unbilled, None unpriced), from :func:`shared.pricing.estimate_cost`."""
        return estimate_cost(self.usage, self.model or DEFAULT_MODEL, billed=self.billed)
