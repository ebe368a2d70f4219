"""Rebuilding a conversation from the logged events."""

from __future__ import annotations

import json

from services.session.rebuild import REBUILD_PREFIX, ConversationLog, LogRecord, parse_records


def S(event: dict[str, object]) -> LogRecord:
    return LogRecord("server", event)


def C(event: dict[str, object]) -> LogRecord:
    return LogRecord("client", event)


TURN = [
    C({"type": "session.update", "session": {"type": "realtime"}}),
    S({"type": "input_audio_buffer.committed", "item_id": "u1"}),
    S({"type": "response.created", "response": {"id": "r1"}}),
    S({"type": "response.output_item.done", "item": {"id": "a1", "type": "message", "role": "assistant",
                                                     "content": [{"type": "output_audio", "transcript": "Sure."}]}}),
    S({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
       "transcript": "book me in"}),
    S({"type": "response.output_item.done", "item": {"id": "f1", "type": "function_call", "call_id": "c1",
                                                     "name": "book", "arguments": "{\"t\":\"10:00\"}"}}),
    S({"type": "response.done", "response": {"id": "r1"}}),
    C({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c1",
                                                    "output": "{\"ok\":true}"}}),
]


def test_items_in_conversation_order() -> None:
    conv = ConversationLog().feed_all(TURN)
    assert conv.items() == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "book me in"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sure."}]},
        {"type": "function_call", "call_id": "c1", "name": "book", "arguments": "{\"t\":\"10:00\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "{\"ok\":true}"},
    ]
    assert conv.owes_response()  # the tool output has no answer yet


def test_a_second_rebuild_does_not_duplicate_items() -> None:
    first = ConversationLog().feed_all(TURN).items()
    records = list(TURN)
    for n, item in enumerate(first, 1):
        records.append(C({"type": "conversation.item.create", "event_id": f"{REBUILD_PREFIX}{n}", "item": item}))
        # the new server's echo carries a new id and no content-bearing event
        records.append(S({"type": "conversation.item.added", "item": {"id": f"new{n}", **item}}))
    records.append(S({"type": "response.output_item.done", "item": {
        "id": "a2", "type": "message", "role": "assistant", "content": [{"type": "output_audio",
                                                                           "transcript": "Booked."}]}}))
    conv = ConversationLog().feed_all(records)
    assert conv.items() == [*first, {"type": "message", "role": "assistant",
                                     "content": [{"type": "output_text", "text": "Booked."}]}]
    assert not conv.owes_response()


def test_turns_without_transcript_and_deleted_items_are_skipped() -> None:
    conv = ConversationLog().feed_all([
        S({"type": "input_audio_buffer.committed", "item_id": "u1"}),
        S({"type": "input_audio_buffer.committed", "item_id": "u2"}),
        S({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u2", "transcript": "hi"}),
        C({"type": "conversation.item.create", "item": {"id": "x", "type": "message", "role": "user",
                                                        "content": [{"type": "input_text", "text": "DTMF 1"}]}}),
        S({"type": "conversation.item.deleted", "item_id": "x"}),
    ])
    assert conv.items() == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]


def test_parse_records_skips_non_objects() -> None:
    records = parse_records([("server", b"not json"), ("server", b"[1]"),
                             ("client", json.dumps({"type": "x"}).encode())])
    assert records == [LogRecord("client", {"type": "x"})]
