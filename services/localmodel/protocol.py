"""Realtime GA client events: validation models, ids and error events
(https://platform.openai.com/docs/api-reference/realtime-client-events, ``error``:
https://platform.openai.com/docs/api-reference/realtime-server-events/error).

Client events are validated with pydantic models that forbid unknown fields, as OpenAI's server rejects
them. A failed validation becomes a :class:`ProtocolError` carrying OpenAI's error ``code`` and ``param``:

- not JSON / not an object / no or unknown ``type`` → ``invalid_event``;
- a field the event does not have → ``unknown_parameter`` (message ``Unknown parameter: 'session.foo'.``);
- a missing required field → ``missing_required_parameter``;
- a wrong type → ``invalid_type``; a value out of range or not allowed → ``invalid_value``.

Every error event echoes the offending client event's ``event_id`` in ``error.event_id`` (openai-agents
matches it).
"""

from __future__ import annotations

import base64
import json
import random
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "CLIENT_EVENT_TYPES",
    "MAX_APPEND_BYTES",
    "ClientEvent",
    "ProtocolError",
    "error_event",
    "new_id",
    "parse_client_event",
]

MAX_APPEND_BYTES = 15 * 1024 * 1024
"""Largest decoded ``input_audio_buffer.append`` payload OpenAI accepts (15 MiB, https://platform.openai.com/docs/api-reference/realtime-client-events)."""


_ID_RANDOM = random.Random(secrets.randbits(128))
"""Ids need to be unique, not secret: a PRNG seeded once from the OS, instead of a ``urandom`` syscall per
event (every audio delta has an ``event_id``; the syscall was ~5 % of the server's CPU in echo mode)."""


def new_id(prefix: str) -> str:
    """A fresh id like OpenAI's: ``<prefix>_`` + 21 URL-safe random characters (``event``, ``item``, …).

    The characters are the URL-safe base64 of 16 random bytes (126 random bits kept), a third of the CPU of
    drawing 21 characters one by one.
    """
    return prefix + "_" + base64.urlsafe_b64encode(_ID_RANDOM.randbytes(16))[:21].decode()


class ProtocolError(Exception):
    """A client event was rejected; becomes an ``error`` server event (the connection stays open)."""

    def __init__(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.error_type = error_type


def error_event(err: ProtocolError) -> dict[str, Any]:
    """The ``error`` server event for ``err`` (https://platform.openai.com/docs/api-reference/realtime-server-events/error)."""
    return {"type": "error", "event_id": new_id("event"), "error": {
        "type": err.error_type, "code": err.code, "message": err.message, "param": err.param,
        "event_id": err.event_id}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- session object (realtime-client-events/session/update) ----------------------------------------------

class AudioFormatModel(_Strict):
    """``{"type": "audio/pcm", "rate": 24000}`` | ``{"type": "audio/pcmu"}`` | ``{"type": "audio/pcma"}``."""

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
    rate: Literal[24000] | None = None


class TurnDetectionModel(_Strict):
    """``server_vad`` / ``semantic_vad`` parameters (``semantic_vad`` is served by the same VAD here)."""

    type: Literal["server_vad", "semantic_vad"]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=10_000)
    idle_timeout_ms: int | None = Field(None, ge=0, le=60 * 60 * 1000)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None


class TranscriptionModel(_Strict):
    """Input transcription settings (model name accepted and echoed; recognition is local)."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    delay: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class NoiseReductionModel(_Strict):
    """Accepted and echoed (no noise reduction is applied)."""

    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class AudioInputModel(_Strict):
    """``session.audio.input``."""

    format: AudioFormatModel | None = None
    transcription: TranscriptionModel | None = None
    noise_reduction: NoiseReductionModel | None = None
    turn_detection: TurnDetectionModel | None = None


class AudioOutputModel(_Strict):
    """``session.audio.output``."""

    format: AudioFormatModel | None = None
    voice: str | dict[str, str] | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class AudioModel(_Strict):
    """``session.audio``."""

    input: AudioInputModel | None = None
    output: AudioOutputModel | None = None


class FunctionToolModel(_Strict):
    """A function tool: ``{"type": "function", "name", "description", "parameters": <JSON Schema>}``."""

    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class SessionModel(_Strict):
    """The body of ``session.update`` (all optional except ``type``)."""

    type: Literal["realtime", "transcription"]
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = Field(None, min_length=1, max_length=1)
    audio: AudioModel | None = None
    tools: list[FunctionToolModel] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    include: list[str] | None = None
    tracing: Literal["auto"] | dict[str, Any] | None = None
    truncation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None


# --- items (realtime-client-events/conversation/item/create) ----------------------------------------------

class ContentPartModel(_Strict):
    """A message content part (``input_text``, ``input_audio``, ``output_text``, ``output_audio``, …)."""

    type: Literal["input_text", "input_audio", "output_text", "output_audio", "text", "audio", "input_image"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    image_url: str | None = None
    detail: str | None = None


class ItemModel(_Strict):
    """A conversation item a client may create: ``message``, ``function_call`` or ``function_call_output``."""

    type: Literal["message", "function_call", "function_call_output"]
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: Literal["completed", "incomplete", "in_progress"] | None = None
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPartModel] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


class ResponseParamsModel(_Strict):
    """``response.create.response`` (https://platform.openai.com/docs/api-reference/realtime-client-events)."""

    output_modalities: list[Literal["audio", "text"]] | None = None
    instructions: str | None = None
    audio: dict[str, Any] | None = None
    tools: list[FunctionToolModel] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    metadata: dict[str, str] | None = None
    conversation: str | None = None
    input: list[dict[str, Any]] | None = None
    prompt: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None


# --- the 11 GA client events (realtime-client-events) -----------------------------------------------------

class _Event(_Strict):
    event_id: str | None = None


class SessionUpdate(_Event):
    """``session.update``."""

    type: Literal["session.update"]
    session: SessionModel


class InputAudioBufferAppend(_Event):
    """``input_audio_buffer.append`` (``audio``: base64 in the session's input format)."""

    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommit(_Event):
    """``input_audio_buffer.commit``."""

    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClear(_Event):
    """``input_audio_buffer.clear``."""

    type: Literal["input_audio_buffer.clear"]


class OutputAudioBufferClear(_Event):
    """``output_audio_buffer.clear`` (WebRTC/SIP only; answered with an error over WebSocket)."""

    type: Literal["output_audio_buffer.clear"]
    response_id: str | None = None


class ConversationItemCreate(_Event):
    """``conversation.item.create``."""

    type: Literal["conversation.item.create"]
    item: ItemModel
    previous_item_id: str | None = None


class ConversationItemRetrieve(_Event):
    """``conversation.item.retrieve``."""

    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemTruncate(_Event):
    """``conversation.item.truncate`` (``audio_end_ms`` inclusive, ≥ 0)."""

    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ConversationItemDelete(_Event):
    """``conversation.item.delete``."""

    type: Literal["conversation.item.delete"]
    item_id: str


class ResponseCreate(_Event):
    """``response.create``."""

    type: Literal["response.create"]
    response: ResponseParamsModel | None = None


class ResponseCancel(_Event):
    """``response.cancel``."""

    type: Literal["response.cancel"]
    response_id: str | None = None


ClientEvent = Annotated[
    SessionUpdate | InputAudioBufferAppend | InputAudioBufferCommit | InputAudioBufferClear
    | OutputAudioBufferClear | ConversationItemCreate | ConversationItemRetrieve | ConversationItemTruncate
    | ConversationItemDelete | ResponseCreate | ResponseCancel,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)

CLIENT_EVENT_TYPES = frozenset({
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear",
    "output_audio_buffer.clear", "conversation.item.create", "conversation.item.retrieve",
    "conversation.item.truncate", "conversation.item.delete", "response.create", "response.cancel",
})


def _param(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc[1:]]  # drop the discriminator tag
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _to_protocol_error(exc: ValidationError, event_id: str | None) -> ProtocolError:
    err = exc.errors()[0]
    param = _param(tuple(err["loc"]))
    kind = err["type"]
    if kind == "extra_forbidden":
        return ProtocolError("unknown_parameter", f"Unknown parameter: '{param}'.", param=param, event_id=event_id)
    if kind == "missing":
        return ProtocolError("missing_required_parameter", f"Missing required parameter: '{param}'.",
                             param=param, event_id=event_id)
    if kind.endswith("_type") or kind in ("model_type", "dict_type", "list_type", "model_attributes_type"):
        return ProtocolError("invalid_type", f"Invalid type for '{param}': {err['msg']}.", param=param,
                             event_id=event_id)
    return ProtocolError("invalid_value", f"Invalid value for '{param}': {err['msg']}.", param=param,
                         event_id=event_id)


def parse_client_event(raw: str | bytes) -> ClientEvent:
    """Parse and validate one client frame.

    Raises:
        ProtocolError: invalid JSON, not an object, unknown ``type``, unknown/missing/mistyped fields.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("invalid_event", "The event is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_event", "The event must be a JSON object.")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("invalid_event", "The 'type' field is missing.", param="type", event_id=event_id)
    if kind not in CLIENT_EVENT_TYPES:
        raise ProtocolError("invalid_event", f"Invalid value: '{kind}'. Supported values are: "
                            + ", ".join(f"'{t}'" for t in sorted(CLIENT_EVENT_TYPES)) + ".",
                            param="type", event_id=event_id)
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _to_protocol_error(exc, event_id) from None
