"""What a call session is given: the model endpoint, per-call tunables and the ``call.<id>.started`` payload."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared import subjects
from shared.audio import parse_format

__all__ = ["CallInfo", "CallOptions", "ModelEndpoint"]


@dataclass(frozen=True)
class ModelEndpoint:
    """Where and how to open the Realtime session: WebSocket ``url``, Bearer ``api_key``, ``model`` name."""

    url: str
    api_key: str | None
    model: str | None

    def with_model(self, model: str) -> ModelEndpoint:
        """This endpoint for ``model``: ``model`` set and the URL's ``?model=`` query parameter replaced (added
        when absent; other parameters kept), since the Realtime WebSocket selects its model by that parameter
        (https://platform.openai.com/docs/guides/realtime-websocket)."""
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
        query.append(("model", model))
        return replace(self, url=urlunsplit(parts._replace(query=urlencode(query))), model=model)


@dataclass(frozen=True)
class CallOptions:
    """Tunables of a call session.

    Attributes:
        audio_batch_ms: smallest ``input_audio_buffer.append`` (ms of audio; see :mod:`.audio`).
        carrier_idle_timeout: seconds without carrier audio after which the call is considered gone.
        barge_in_settle_s: how long a truncation waits for the mark echoes that follow a ``clear``.
        model_error_after: see the field.
    """

    audio_batch_ms: int = 40
    carrier_idle_timeout: float = 120.0
    barge_in_settle_s: float = 1.0
    model_error_after: int = 5
    """Consecutive failed model connects (≈ 6 s of backoff) before ``session.error`` ``model_unavailable``."""
    replay_wait_s: float = 3.0
    """After a takeover from a crashed owner: seconds to wait for the gateway's caller-audio replay (live
    frames are dropped meanwhile, the replay re-sends them) before taking live audio anyway."""

    def __post_init__(self) -> None:
        if self.audio_batch_ms < 20 or self.carrier_idle_timeout <= 0 or self.barge_in_settle_s < 0:
            raise ValueError("audio_batch_ms must be ≥ 20 and the timeouts positive")


@dataclass(frozen=True)
class CallInfo:
    """The ``call.<id>.started`` payload (design.md): ids, carrier, agent, ``audio_format``, from/to."""

    call_id: str
    carrier: str
    agent: str
    audio_format: str
    from_: str | None
    to: str | None
    agent_version: str | None = None
    """The version the gateway chose (``shared.rollout``); None: the agent's default spec."""

    @classmethod
    def parse(cls, payload: Any) -> CallInfo:
        """Validate a started payload.

        Raises:
            ValueError: not an object, an invalid call id or an unknown ``audio_format``.
        """
        if not isinstance(payload, dict):
            raise ValueError("call.started payload must be a JSON object")
        call_id = subjects.validate_call_id(str(payload.get("call_id", "")))
        audio_format = str(payload.get("audio_format") or "audio/pcmu")
        parse_format(audio_format)
        return cls(call_id, str(payload.get("carrier") or "unknown"), str(payload.get("agent") or ""),
                   audio_format, payload.get("from"), payload.get("to"),
                   str(payload["agent_version"]) if payload.get("agent_version") else None)
