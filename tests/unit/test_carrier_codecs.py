"""The Telnyx, Vonage and Plivo frame codecs and webhook answers (shared/carriers), both directions."""

from __future__ import annotations

import base64
import json

import pytest

from shared.audio import PCMA, PCMU
from shared.carriers import plivo, telnyx, vonage
from shared.carriers.frames import (
    AudioIn,
    CarrierProtocolError,
    Cleared,
    DtmfIn,
    MarkEcho,
    PlayAudio,
    PlayClear,
    PlayMark,
    StreamStart,
    StreamStop,
)


def telnyx_start(encoding: str = "PCMU", rate: int = 8000) -> str:
    return json.dumps({"event": "start", "sequence_number": "1", "stream_id": "S1", "start": {
        "call_control_id": "v3:abc", "from": "+1555", "to": "+1666",
        "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1},
        "custom_parameters": {"agent": "receptionist", "run_id": "r"}}})


def test_telnyx_start_media_dtmf_mark_stop() -> None:
    codec = telnyx.TelnyxCodec()
    assert codec.decode('{"event":"connected","version":"1.0.0"}', None) is None
    start = codec.decode(telnyx_start(), None)
    assert start == StreamStart(carrier_call_id="v3:abc", stream_id="S1", wire_format=PCMU, from_="+1555",
                                to="+1666", parameters={"agent": "receptionist", "run_id": "r"})
    payload = base64.b64encode(b"\x01\x02").decode()
    assert codec.decode(telnyx.caller_frame("media", "S1", 2, media={"payload": payload}), None) == AudioIn(b"\x01\x02")
    assert codec.decode(telnyx.caller_frame("media", "S1", 3, media={"track": "outbound", "payload": payload}),
                        None) is None
    assert codec.decode('{"event":"dtmf","dtmf":{"digit":"#"}}', None) == DtmfIn("#")
    assert codec.decode('{"event":"mark","mark":{"name":"m1"}}', None) == MarkEcho("m1")
    assert codec.decode('{"event":"stop","stop":{}}', None) == StreamStop()
    assert codec.decode('{"event":"error","payload":{"code":1}}', None) is None
    assert telnyx.parse_outbound(codec.encode_audio(b"\x01\x02")[0]) == PlayAudio(b"\x01\x02")
    assert telnyx.parse_outbound(codec.encode_mark("m2")[0]) == PlayMark("m2")
    assert telnyx.parse_outbound(codec.encode_clear()[0]) == PlayClear()


def test_telnyx_formats() -> None:
    assert telnyx.TelnyxCodec().decode(telnyx_start("PCMA"), None).wire_format == PCMA  # type: ignore[union-attr]
    l16 = telnyx.TelnyxCodec()
    assert l16.decode(telnyx_start("L16", 16000), None).wire_format == "audio/pcm;rate=16000"  # type: ignore[union-attr]
    # L16 is big-endian on the wire, little-endian on the bus
    wire = base64.b64encode(b"\x12\x34\x56\x78").decode()
    assert l16.decode(json.dumps({"event": "media", "media": {"payload": wire}}), None) == AudioIn(b"\x34\x12\x78\x56")
    assert telnyx.parse_outbound(l16.encode_audio(b"\x34\x12")[0]) == PlayAudio(b"\x12\x34")
    with pytest.raises(CarrierProtocolError, match="unsupported media format OPUS"):
        telnyx.TelnyxCodec().decode(telnyx_start("OPUS", 16000), None)


def test_telnyx_texml_roundtrip() -> None:
    doc = telnyx.build_texml("wss://gw.example/telnyx/media?token=a.b.c", {"agent": "r", "caller": "+1&<2>"})
    assert 'bidirectionalMode="rtp"' in doc
    assert telnyx.parse_texml(doc) == ("wss://gw.example/telnyx/media?token=a.b.c", {"agent": "r", "caller": "+1&<2>"})
    with pytest.raises(ValueError):
        telnyx.build_texml("https://gw.example/x", {})


def test_vonage_connected_audio_and_events() -> None:
    codec = vonage.VonageCodec()
    with pytest.raises(CarrierProtocolError, match="audio before websocket:connected"):
        codec.decode(None, bytes(640))
    start = codec.decode(vonage.connected_frame(16000, {"agent": "r", "caller": "15551230001", "uuid": "u1"}), None)
    assert isinstance(start, StreamStart)
    assert start.wire_format == "audio/pcm;rate=16000" and start.carrier_call_id == "u1"
    assert start.from_ == "15551230001" and start.parameters["agent"] == "r"
    assert codec.decode(None, bytes(640)) == AudioIn(bytes(640))
    with pytest.raises(CarrierProtocolError, match="expected 640"):
        codec.decode(None, bytes(320))
    assert codec.decode('{"event":"websocket:dtmf","digit":"5","duration":260}', None) == DtmfIn("5")
    assert codec.decode('{"event":"websocket:notify","payload":{"name":"m"}}', None) == MarkEcho("m")
    assert codec.decode('{"event":"websocket:cleared"}', None) == Cleared()
    with pytest.raises(CarrierProtocolError, match="unsupported content-type"):
        vonage.VonageCodec().decode('{"event":"websocket:connected","content-type":"audio/l16;rate=11025"}', None)


def test_vonage_outbound_frames_are_exactly_20_ms() -> None:
    codec = vonage.VonageCodec()
    codec.decode(vonage.connected_frame(8000, {}), None)
    frames = codec.encode_audio(bytes(range(256)) * 3)  # 768 bytes: two 320-byte frames, 128 held
    assert [len(f) for f in frames] == [320, 320]
    assert codec.encode_audio(b"\x01" * 100) == []  # 228 held
    padded, notify = codec.encode_mark("m1")
    assert isinstance(padded, bytes) and len(padded) == 320 and padded[228:] == bytes(92)
    assert vonage.parse_outbound(notify) == PlayMark("m1")
    codec.encode_audio(b"\x01" * 10)
    assert codec.encode_clear() == ['{"action":"clear"}'] and codec.encode_mark("m2")[:-1] == []
    assert vonage.parse_outbound(bytes(320)) == PlayAudio(bytes(320))


def test_vonage_ncco_roundtrip() -> None:
    ncco = vonage.build_ncco("wss://gw.example/vonage/media", {"agent": "r"}, rate=16000, authorization="Bearer t")
    assert ncco[0]["endpoint"][0]["content-type"] == "audio/l16;rate=16000"
    assert vonage.parse_ncco(ncco) == ("wss://gw.example/vonage/media", 16000, {"agent": "r"}, "Bearer t")
    with pytest.raises(ValueError):
        vonage.parse_ncco([{"action": "talk", "text": "hi"}])


def test_plivo_events_and_outbound() -> None:
    codec = plivo.PlivoCodec()
    start = codec.decode(json.dumps({"event": "start", "sequenceNumber": 0, "start": {
        "callId": "c1", "streamId": "s1", "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}},
        "extra_headers": json.dumps({"agent": "r", "caller": "+1555"})}), None)
    assert isinstance(start, StreamStart)
    assert (start.wire_format, start.stream_id, start.from_) == ("audio/pcm;rate=16000", "s1", "+1555")
    assert codec.decode('{"event":"playedStream","streamId":"s1","name":"cp"}', None) == MarkEcho("cp")
    assert codec.decode('{"event":"clearedAudio","streamId":"s1"}', None) == Cleared()
    assert codec.decode('{"event":"dtmf","dtmf":{"digit":"1"}}', None) == DtmfIn("1")
    assert codec.decode('{"event":"stop"}', None) == StreamStop()
    play = json.loads(codec.encode_audio(b"\x00\x01")[0])
    assert play["media"]["contentType"] == "audio/x-l16" and play["media"]["sampleRate"] == 16000
    assert plivo.parse_outbound(codec.encode_audio(b"\x00\x01")[0]) == PlayAudio(b"\x00\x01")
    assert json.loads(codec.encode_mark("cp")[0]) == {"event": "checkpoint", "streamId": "s1", "name": "cp"}
    assert plivo.parse_outbound(codec.encode_clear()[0]) == PlayClear()
    assert plivo.parse_extra_headers("a=1;b=2") == {"a": "1", "b": "2"}
    with pytest.raises(CarrierProtocolError):
        plivo.parse_extra_headers("a;b")


def test_plivo_xml_roundtrip() -> None:
    doc = plivo.build_stream_xml("wss://gw.example/plivo/media?token=a.b.c", {"agent": "r", "caller": "+1555"})
    assert 'bidirectional="true"' in doc and 'keepCallAlive="true"' in doc
    assert plivo.parse_stream_xml(doc) == ("wss://gw.example/plivo/media?token=a.b.c", PCMU,
                                           {"agent": "r", "caller": "+1555"})
    with pytest.raises(ValueError, match="may not contain"):
        plivo.build_stream_xml("wss://gw.example/plivo/media", {"agent": "a;b"})
