"""Client event validation and error codes (https://platform.openai.com/docs/api-reference/realtime-client-events, https://platform.openai.com/docs/api-reference/realtime-server-events/error)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.localmodel.conversation import Conversation, StoredItem
from services.localmodel.protocol import ProtocolError, error_event, parse_client_event
from services.localmodel.state import SessionState


def code_of(raw: str) -> tuple[str, str | None, str | None]:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(raw)
    return info.value.code, info.value.param, info.value.event_id


def test_all_eleven_client_events_parse() -> None:
    events: list[dict[str, Any]] = [
        {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {
            "type": "audio/pcmu"}, "turn_detection": None}}}},
        {"type": "input_audio_buffer.append", "audio": "AAAA"}, {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.clear"}, {"type": "output_audio_buffer.clear"},
        {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "hi"}]}},
        {"type": "conversation.item.retrieve", "item_id": "i"},
        {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 10},
        {"type": "conversation.item.delete", "item_id": "i"},
        {"type": "response.create", "event_id": "e1"}, {"type": "response.cancel"},
    ]
    assert [parse_client_event(json.dumps(e)).type for e in events] == [str(e["type"]) for e in events]


def test_error_codes() -> None:
    assert code_of("{not json")[0] == "invalid_event"
    assert code_of("[1]")[0] == "invalid_event"
    assert code_of('{"type": "nope", "event_id": "e9"}') == ("invalid_event", "type", "e9")
    assert code_of('{"type": "session.update", "event_id": "e2", "session": {"type": "realtime", "foo": 1}}') == (
        "unknown_parameter", "session.foo", "e2")
    assert code_of('{"type": "input_audio_buffer.append", "audio": 5}')[0] == "invalid_type"
    assert code_of('{"type": "input_audio_buffer.append"}')[0:2] == ("missing_required_parameter", "audio")
    assert code_of('{"type": "session.update", "session": {"type": "realtime", "audio": {"output": {'
                   '"format": {"type": "audio/pcm", "rate": 16000}}}}}')[0] == "invalid_value"
    event = error_event(ProtocolError("invalid_value", "bad", event_id="x"))
    assert event["error"]["event_id"] == "x" and event["event_id"].startswith("event_")


def test_session_update_merges_and_echoes_audio() -> None:
    state = SessionState("gpt-realtime")
    update = parse_client_event(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "instructions": "x", "audio": {"input": {"format": {"type": "audio/pcmu"},
                                                                     "turn_detection": {"type": "server_vad",
                                                                                        "silence_duration_ms": 300}},
                                                           "output": {"format": {"type": "audio/pcma"}}}}}))
    assert update.type == "session.update"
    state.apply(update.session, None)
    snap = state.snapshot()
    assert snap["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert snap["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300
    assert snap["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 300
    assert snap["audio"]["output"]["voice"] == "marin" and state.output_format.name == "audio/pcma"
    assert state.vad_params is not None and state.vad_params.silence_duration_ms == 300


def test_conversation_truncate_insert_delete() -> None:
    conv = Conversation()
    conv.add(StoredItem({"id": "a", "type": "message", "role": "user", "content": []}))
    stored = StoredItem({"id": "b", "type": "message", "role": "assistant",
                         "content": [{"type": "output_audio", "transcript": "one two three four"}]},
                        bytearray(8000), 1000.0, [(0.0, 1000.0, "one two three four")])
    assert conv.add(stored) == "a"
    assert conv.add(StoredItem({"id": "c", "type": "message", "role": "user", "content": []}), "root") is None
    assert conv.ids() == ["c", "a", "b"]
    with pytest.raises(ProtocolError) as info:
        conv.truncate("b", 0, 1500, 8.0)
    assert info.value.code == "invalid_value" and "already shorter" in info.value.message
    conv.truncate("b", 0, 500, 8.0)
    assert len(stored.audio) == 4000 and stored.item["content"][0]["transcript"] == "one two"
    conv.delete("c")
    with pytest.raises(ProtocolError):
        conv.delete("c")
    with pytest.raises(ProtocolError):
        conv.add(StoredItem({"id": "z", "type": "message"}), "missing")
