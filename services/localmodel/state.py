"""The effective Realtime session object and how ``session.update`` changes it
(https://platform.openai.com/docs/api-reference/realtime-client-events/session/update).

The full effective session — including ``audio`` — is echoed in ``session.created`` / ``session.updated``
(openai-agents reads ``audio.output.format`` from it). Defaults follow OpenAI's GA
``session.created`` example, with ``server_vad`` silence 500 ms (the documented default).
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any, Final

from services.localmodel.protocol import ProtocolError, SessionModel, new_id
from services.localmodel.vad import VadParams
from shared.audio import PCM24K, AudioFormat, parse_format

__all__ = ["SERVER_VAD_DEFAULTS", "SessionState"]

SERVER_VAD_DEFAULTS: Final[dict[str, Any]] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
}
_PCM_FORMAT: Final = {"type": "audio/pcm", "rate": 24000}


_parse_format = functools.lru_cache(maxsize=16)(parse_format)
"""``parse_format`` memoized: the formats are read for every audio chunk and there are only a handful of names."""


def _format_name(fmt: dict[str, Any]) -> str:
    return PCM24K if fmt.get("type") == "audio/pcm" else str(fmt["type"])


class SessionState:
    """The session object as a dict in GA shape, plus typed views of what the server needs."""

    def __init__(self, model: str) -> None:
        self.session: dict[str, Any] = {
            "type": "realtime", "object": "realtime.session", "id": new_id("sess"), "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf", "tracing": None, "prompt": None, "truncation": "auto",
            "expires_at": int(time.time()) + 30 * 60, "include": None,
            "audio": {
                "input": {"format": dict(_PCM_FORMAT), "transcription": None, "noise_reduction": None,
                          "turn_detection": dict(SERVER_VAD_DEFAULTS)},
                "output": {"format": dict(_PCM_FORMAT), "voice": "marin", "speed": 1.0},
            },
        }
        self.audio_started = False
        """Set once the model has produced audio: the voice may no longer change (as OpenAI)."""

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the effective session, for ``session.created``/``session.updated``."""
        return copy.deepcopy(self.session)

    def apply(self, update: SessionModel, event_id: str | None) -> None:
        """Merge a validated ``session.update`` body into the effective session.

        Raises:
            ProtocolError: ``type: "transcription"`` (not served here) or a voice change after audio.
        """
        if update.type != "realtime":
            raise ProtocolError("invalid_value", "Only session.type 'realtime' is supported by this server.",
                                param="session.type", event_id=event_id)
        body = update.model_dump(exclude_unset=True)
        audio = body.pop("audio", None)
        if "tools" in body:
            body["tools"] = [{k: v for k, v in t.items() if v is not None} for t in update.model_dump(
                exclude_none=True).get("tools", [])]
        body.pop("type", None)
        self.session.update(body)
        if audio:
            self._apply_audio(audio, event_id)

    def _apply_audio(self, audio: dict[str, Any], event_id: str | None) -> None:
        cur = self.session["audio"]
        for side in ("input", "output"):
            for key, value in (audio.get(side) or {}).items():
                if key == "format" and value is not None:
                    value = {k: v for k, v in value.items() if v is not None}
                    if value["type"] == "audio/pcm":
                        value["rate"] = 24000
                elif key == "turn_detection" and value is not None:
                    value = {**SERVER_VAD_DEFAULTS, **{k: v for k, v in value.items() if v is not None}}
                    if value["type"] == "semantic_vad":
                        value = {k: value[k] for k in ("type", "create_response", "interrupt_response")} | {
                            "eagerness": value.get("eagerness", "auto")}
                elif key == "voice" and self.audio_started and value != cur["output"].get("voice"):
                    raise ProtocolError("invalid_value", "Cannot update a conversation's voice if assistant "
                                        "audio is present.", param="session.audio.output.voice", event_id=event_id)
                elif isinstance(value, dict):
                    value = {k: v for k, v in value.items() if v is not None}
                cur[side][key] = value

    @property
    def input_format(self) -> AudioFormat:
        """The input audio format (``audio/pcm`` 24 kHz, ``audio/pcmu`` or ``audio/pcma``)."""
        return _parse_format(_format_name(self.session["audio"]["input"]["format"]))

    @property
    def output_format(self) -> AudioFormat:
        """The output audio format."""
        return _parse_format(_format_name(self.session["audio"]["output"]["format"]))

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        """The turn detection settings, or None for manual commits."""
        td: dict[str, Any] | None = self.session["audio"]["input"]["turn_detection"]
        return td

    @property
    def vad_params(self) -> VadParams | None:
        """VAD parameters (``semantic_vad`` is served as ``server_vad`` with defaults), or None."""
        td = self.turn_detection
        if td is None:
            return None
        d = SERVER_VAD_DEFAULTS
        return VadParams(threshold=float(td.get("threshold", d["threshold"])),
                         prefix_padding_ms=int(td.get("prefix_padding_ms", d["prefix_padding_ms"])),
                         silence_duration_ms=int(td.get("silence_duration_ms", d["silence_duration_ms"])),
                         idle_timeout_ms=td.get("idle_timeout_ms"))

    @property
    def transcription_enabled(self) -> bool:
        """Whether ``audio.input.transcription`` is set (input transcription events are sent)."""
        return self.session["audio"]["input"].get("transcription") is not None

    @property
    def text_only(self) -> bool:
        """True when ``output_modalities`` is ``["text"]``."""
        return list(self.session.get("output_modalities") or ["audio"]) == ["text"]
