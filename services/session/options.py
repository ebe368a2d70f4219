"""What a call session is given besides its ``call.<id>.started`` (:class:`shared.contracts.CallStarted`): the
model endpoint and per-call tunables."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shared.redact import Redactor

from .agent import RedactionSpec

__all__ = ["CallOptions", "ModelEndpoint"]


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
        disclosure_chunk_ms: audio per ``command.play`` of the disclosure (one carrier mark each).
        disclosure_confirm_s: how long past its own length the disclosure's marks may take (then
            ``unconfirmed``; :mod:`services.session.disclosure`).
    """

    audio_batch_ms: int = 40
    carrier_idle_timeout: float = 120.0
    barge_in_settle_s: float = 1.0
    model_error_after: int = 5
    """Consecutive failed model connects (≈ 6 s of backoff) before ``session.error`` ``model_unavailable``."""
    disclosure_chunk_ms: int = 500
    disclosure_confirm_s: float = 10.0
    capture_key: str | None = field(default=None, repr=False)
    """``SWITCHBOARD_CAPTURE_KEY`` (hex): seals keypad captures for their tool (:mod:`shared.sealed`)."""
    redaction: bool = False
    """``SWITCHBOARD_REDACTION``: redact what the session logs (an agent's ``redaction`` overrides it)."""
    redaction_patterns: tuple[str, ...] = ()
    """``SWITCHBOARD_REDACTION_PATTERNS``: extra regular expressions, for every agent."""
    redaction_region: str = "US"
    """``SWITCHBOARD_REDACTION_REGION``: phone numbers without a country code."""
    replay_wait_s: float = 3.0
    """After a takeover from a crashed owner: seconds to wait for the gateway's caller-audio replay (live
    frames are dropped meanwhile, the replay re-sends them) before taking live audio anyway."""

    def redactor(self, spec: RedactionSpec | None) -> Redactor | None:
        """The redactor for an agent with redaction ``spec`` (None: redaction is off for it)."""
        enabled = spec.enabled if spec is not None else self.redaction
        if not enabled:
            return None
        return Redactor([*self.redaction_patterns, *(spec.patterns if spec else [])], region=self.redaction_region)

    def __post_init__(self) -> None:
        if self.audio_batch_ms < 20 or self.carrier_idle_timeout <= 0 or self.barge_in_settle_s < 0:
            raise ValueError("audio_batch_ms must be ≥ 20 and the timeouts positive")
        if self.disclosure_chunk_ms < 20 or self.disclosure_confirm_s < 0:
            raise ValueError("disclosure_chunk_ms must be ≥ 20 and disclosure_confirm_s ≥ 0")

