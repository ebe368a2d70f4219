"""Field sealing and key wrapping of the archive (services/recorder/crypto.py): what is sealed per event type,
round trips, binding to call/event/field, erased reads, and clear errors for wrong or malformed keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from services.recorder.crypto import ERASED, PREFIX, KeyUnavailable, LocalKms, new_data_key, open_body, seal_body
from services.recorder.vault import MissingKms

CALL = "call_01TEST"


def seal(key: bytes, type_: str, body: Mapping[str, Any] | bytes, seq: int = 7, stream: str = "RT") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return seal_body(key, CALL, stream, seq, type_, raw)


def test_content_fields_are_sealed_and_the_rest_stays_clear() -> None:
    key = new_data_key()
    type_ = "conversation.item.input_audio_transcription.completed"
    body = {"type": type_, "item_id": "item_1", "content_index": 0, "transcript": "my card is 4111"}
    sealed = json.loads(seal(key, type_, body))
    assert sealed["transcript"].startswith(PREFIX) and "4111" not in json.dumps(sealed)
    assert {k: v for k, v in sealed.items() if k != "transcript"} == {k: v for k, v in body.items()
                                                                        if k != "transcript"}
    opened = open_body(key, CALL, "RT", 7, type_, json.dumps(sealed).encode())
    assert json.loads(opened) == body


def test_nested_items_and_calls_fields_round_trip() -> None:
    key = new_data_key()
    item = {"type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "fc_1", "output": {"ok": True, "ref": "B7"}}}
    sealed = seal(key, "conversation.item.create", item)
    parsed = json.loads(sealed)
    assert parsed["item"]["call_id"] == "fc_1" and parsed["item"]["output"].startswith(PREFIX)
    assert json.loads(open_body(key, CALL, "RT", 7, "conversation.item.create", sealed)) == item
    started = {"call_id": CALL, "agent": "receptionist", "from": "+15551230001", "to": "+15559870000"}
    sealed = seal(key, "started", started, stream="CALLS")
    assert b"+1555" not in sealed and json.loads(sealed)["agent"] == "receptionist"
    assert json.loads(open_body(key, CALL, "CALLS", 7, "started", sealed)) == started
    keyed = {"digits": "4421987#"}  # what the agent keys in for the caller (command.dtmf)
    sealed = seal(key, "command.dtmf", keyed, stream="CALLS")
    assert b"4421987" not in sealed
    assert json.loads(open_body(key, CALL, "CALLS", 7, "command.dtmf", sealed)) == keyed


def test_events_without_content_are_stored_unchanged() -> None:
    key = new_data_key()
    raw = b'{"type": "input_audio_buffer.speech_started", "audio_start_ms": 100}'
    assert seal_body(key, CALL, "RT", 1, "input_audio_buffer.speech_started", raw) is raw
    raw = b'{"type": "response.done", "response": {"usage": {"total_tokens": 5}}}'  # no output: nothing to seal
    assert seal_body(key, CALL, "RT", 1, "response.done", raw) == raw


def test_a_body_that_is_not_json_is_sealed_whole() -> None:
    key = new_data_key()
    sealed = seal(key, "input_audio_buffer.append", b"\x00\x01not json")
    assert b"not json" not in sealed
    assert open_body(key, CALL, "RT", 7, "input_audio_buffer.append", sealed) == b"\x00\x01not json"
    assert json.loads(open_body(None, CALL, "RT", 7, "input_audio_buffer.append", sealed)) == {"$enc_body": ERASED}


def test_erased_reads_as_erased_and_a_wrong_key_or_moved_ciphertext_fails() -> None:
    key = new_data_key()
    body = {"type": "response.output_audio.delta", "item_id": "i", "delta": "AAAA"}
    sealed = seal(key, "response.output_audio.delta", body)
    assert json.loads(open_body(None, CALL, "RT", 7, "response.output_audio.delta", sealed))["delta"] == ERASED
    with pytest.raises(KeyUnavailable, match="event 7 of call call_01TEST"):
        open_body(new_data_key(), CALL, "RT", 7, "response.output_audio.delta", sealed)
    with pytest.raises(KeyUnavailable):  # the same ciphertext presented as another event
        open_body(key, CALL, "RT", 8, "response.output_audio.delta", sealed)


def test_local_kms_binds_the_key_to_its_call_and_names_a_wrong_kek(tmp_path: Path) -> None:
    kms = LocalKms(bytes(range(32)))
    data_key = new_data_key()
    wrapped = asyncio.run(kms.wrap(CALL, data_key))
    assert asyncio.run(kms.unwrap(CALL, wrapped, kms.key_id)) == data_key
    with pytest.raises(KeyUnavailable, match="does not authenticate"):
        asyncio.run(kms.unwrap("call_other", wrapped, kms.key_id))
    other = LocalKms(bytes(32))
    with pytest.raises(KeyUnavailable, match=f"wrapped under archive key {kms.key_id}.*SWITCHBOARD_ARCHIVE_KEY"):
        asyncio.run(other.unwrap(CALL, wrapped, kms.key_id))
    with pytest.raises(KeyUnavailable, match="no archive key"):
        asyncio.run(MissingKms(tmp_path / "archive_key").unwrap(CALL, wrapped, kms.key_id))


def test_key_settings_and_files(tmp_path: Path) -> None:
    assert LocalKms.from_setting("00" * 32).key_id == LocalKms(bytes(32)).key_id
    with pytest.raises(ValueError, match="64 hex digits or base64"):
        LocalKms.from_setting("not a key")
    with pytest.raises(ValueError, match="32 bytes"):
        LocalKms.from_setting("00" * 16)
    path = tmp_path / "auth" / "archive_key"
    first = LocalKms.from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert LocalKms.from_file(path).key_id == first.key_id  # read back, not replaced
    path.write_text("garbage")
    with pytest.raises(ValueError, match="64 hex digits"):
        LocalKms.from_file(path)
