"""The wire contracts (shared.contracts) against the published catalogue, docs/events.asyncapi.yaml: each
contract's encoding validates against its message's payload schema, every catalogue example parses, every
non-Realtime message with a JSON body has a contract, and bad bodies raise one error type."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from shared import contracts as c
from shared.errors import PermanentError, SwitchboardError

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "events.asyncapi.yaml"
CID = "call_01JEX3V9Q6ZK1T8M4N2B5C7D9F"

NO_JSON_CONTRACT = {
    "AudioIn": "raw carrier audio bytes, no JSON",
    "ToolError": "a nats.micro error: empty body, code and message in headers (shared.errors.ServiceCallError)",
    "Span": "a span record of shared.telemetry.span_to_dict (telemetry, not a call message)",
}

SAMPLES: dict[str, list[Any]] = {
    "Keypad": [c.KeypadDigit(digit="4"), c.KeypadDigit(digit="#")],
    "CommandCapture": [c.CommandCapture(active=True, state="card", kind="card"),
                       c.CommandCapture(active=False, state="card")],
    "SessionDisclosure": [c.SessionDisclosure(
        call_id=CID, status="completed", text="You are speaking with an AI assistant.", item_id=f"disclosure_{CID}",
        audio_format="audio/pcmu", audio_bytes=16000, audio_ms=2000, played_bytes=16000, played_ms=2000,
        started_at=1796600000.12, finished_at=1796600003.95, gate_recording=True, withheld_bytes=30720)],
    "SessionCapture": [c.SessionCapture(call_id=CID, state="card", tool="take_payment", kind="card", digits=16,
                                        masked="••••••••••••1111", ok=True, error_code=None,
                                        tool_call_id="capture_1")],
    "CallErased": [
        c.CallErased(call_id=CID, erased_ns=1_796_622_952_577_482_767, erased_by="api:ops@host", reason="request"),
        c.CallErased(call_id=CID, erased_ns=1_796_622_952_000_000_000, erased_by="retention", reason="retention"),
    ],
    "CallStarted": [
        c.CallStarted(call_id=CID, carrier="twilio", agent="receptionist", agent_version="2",
                      audio_format="audio/pcmu", from_="+15551230001", to="+15559870000",
                      carrier_call_id="CA" + "1" * 32, stream_id="MZ" + "2" * 32,
                      custom_parameters={"run_id": "r-42"}, started_at="2026-12-07T05:30:00.123456+00:00"),
        c.CallStarted(call_id=CID, carrier="browser", agent="receptionist", audio_format="audio/pcm;rate=24000",
                      started_at="2026-12-07T05:30:00+00:00"),
    ],
    "CallEnded": [
        c.CallEnded(reason="caller_hangup", duration_ms=4810.2, audio_in_ms=4800.0, audio_out_ms=2100.0,
                    outbound_dropped=0, carrier="twilio", carrier_call_id="CA1", stream_id="MZ1", close_code=1000),
        c.CallEnded(reason="protocol_error", error="media payload is not base64"),
        c.CallEnded(reason="transfer", transfer_to="+15550001111"),
        c.CallEnded(reason="carrier_silent", idle_s=30.0),
    ],
    "CarrierMark": [c.CarrierMark(name="m-17", item_id="item_007", played_bytes=4800, cleared=False),
                    c.CarrierMark(name="m-18", item_id=None, played_bytes=0, cleared=True)],
    "CarrierDtmf": [c.CarrierDtmf(digit=d) for d in "09*#AD"],
    "CarrierError": [c.CarrierError(code=1009, reason="websocket closed with 1009"),
                     c.CarrierError(code="invalid_frame", reason="media payload is not base64")],
    "CarrierDetached": [c.CarrierDetached(reason="gateway_drain", stream_id="MZ" + "2" * 32),
                        c.CarrierDetached(reason="gateway_drain")],
    "CarrierResumed": [c.CarrierResumed(carrier="twilio", carrier_call_id="CA" + "1" * 32, stream_id="MZ" + "3" * 32,
                                        gap_ms=840.5),
                       c.CarrierResumed(carrier="twilio")],
    "CommandClear": [c.CommandClear(reason="barge_in", item_id="item_1", response_id="resp_1"), c.CommandClear()],
    "CommandHangup": [c.CommandHangup(), c.CommandHangup(reason="end_call")],
    "CommandTransfer": [c.CommandTransfer(to="+15550001111"), c.CommandTransfer(to="sip:desk@example.com",
                                                                                reason="caller asked")],
    "CommandPlay": [c.CommandPlay(audio="//7+/v7+", audio_format="audio/pcmu", item_id="hold"),
                    c.CommandPlay(audio="")],
    "CommandReplay": [c.CommandReplay(from_bytes=48000), c.CommandReplay(from_bytes=0)],
    "CommandDtmf": [c.CommandDtmf(digits="1234#"), c.CommandDtmf(digits="*9AD")],
    "CarrierAmd": [c.CarrierAmd(carrier="twilio", answered_by="machine_end_beep", human=False,
                                carrier_call_id="CA0123", detection_ms=2410),
                   c.CarrierAmd(carrier="telnyx", answered_by="unknown")],
    "SessionModelConnected": [
        c.SessionModelConnected(call_id=CID, session_id="sess_1", model="gpt-realtime", connection=2,
                                reconnect=True, billed=True, agent="receptionist", agent_version="2"),
        c.SessionModelConnected(call_id=CID, billed=False, agent="receptionist",
                                url="ws://127.0.0.1:8765/v1/realtime"),
        c.SessionModelConnected(call_id=CID, session_id="sess_2", model="gpt-realtime", connection=1,
                                reconnect=True, takeover="lapse", billed=True, agent="receptionist"),
    ],
    "SessionStateChanged": [c.SessionStateChanged(call_id=CID, from_="greeting", to="booking",
                                                  tool="lookup_customer", tool_call_id="call_1"),
                            c.SessionStateChanged(call_id=CID, to="start")],
    "SessionSummary": [
        c.SessionSummary(call_id=CID, agent="receptionist", usage={"input_tokens": 3, "total_tokens": 3},
                         turns={"user": 2, "assistant": 3, "responses": {"completed": 3}},
                         durations={"call_ms": 812.5, "first_audio_ms": [210.0], "first_audio_p50_ms": 210.0},
                         tool_calls=[{"name": "end_call", "tool_call_id": "c1", "ok": True, "duration_ms": 3.1}],
                         barge_ins=1, reconnects=0, events={"client": 10, "server": 40}, flow_state="done",
                         ended_reason="agent_hangup"),
        c.SessionSummary(call_id=CID),
    ],
    "SessionError": [c.SessionError(call_id=CID, code="internal", message="The session for this call failed."),
                     c.SessionError(call_id=CID, code="publish_failed", message="not acked", detail="rt.x.y")],
    "SessionHandover": [c.SessionHandover(call_id=CID, owner="inst_1", epoch=4)],
    "ToolRequest": [
        c.ToolRequest({"time": "10:00"}, "call_abc", c.CallInfo(CID, "+15551230001", "+15559870000", "receptionist"),
                      4899.9),
        c.ToolRequest({}, None, c.CallInfo(CID)),
    ],
    "ToolReply": [c.ToolResult({"booked": True}), c.ToolResult({"status": "ending_call"}, {"verb": "hangup"}),
                  c.ToolResult(None, {"verb": "transfer", "to": "+15550001111"})],
}


@cache
def _doc() -> dict[str, Any]:
    doc = yaml.safe_load(ASYNCAPI.read_text())
    assert isinstance(doc, dict)
    return doc


def _payload_validator(message: str) -> jsonschema.Draft7Validator:
    registry: Registry[Any] = Registry().with_resource(
        "urn:switchboard:asyncapi", Resource.from_contents(_doc(), default_specification=DRAFT7))
    schema = _doc()["components"]["messages"][message]["payload"]
    if "$ref" in schema:
        schema = {"$ref": "urn:switchboard:asyncapi" + schema["$ref"]}
    return jsonschema.Draft7Validator(schema, registry=registry)


def test_every_non_realtime_message_of_the_catalogue_has_a_contract() -> None:
    messages = _doc()["components"]["messages"]
    realtime = {name for name in messages if name.startswith("Rt")}
    assert set(c.CATALOGUE) == set(messages) - realtime - set(NO_JSON_CONTRACT)
    assert set(NO_JSON_CONTRACT) <= set(messages)
    assert set(SAMPLES) == set(c.CATALOGUE)


@pytest.mark.parametrize("message", sorted(SAMPLES))
def test_encoding_validates_against_the_catalogue_schema_and_parses_back(message: str) -> None:
    contract = c.CATALOGUE[message]
    validator = _payload_validator(message)
    for sample in SAMPLES[message]:
        assert isinstance(sample, contract)
        body = sample.encode()
        validator.validate(body)
        wire = json.dumps(body).encode()
        assert contract.parse(wire) == sample
        assert contract.parse(body) == sample


@pytest.mark.parametrize("message", sorted(SAMPLES))
def test_every_catalogue_example_parses_with_its_contract(message: str) -> None:
    contract = c.CATALOGUE[message]
    examples = _doc()["components"]["messages"][message].get("examples", [])
    for example in examples:
        parsed = contract.parse(example["payload"])
        _payload_validator(message).validate(parsed.encode())


def test_call_started_keeps_the_design_field_names() -> None:
    body = SAMPLES["CallStarted"][0].encode()
    assert list(body) == ["call_id", "carrier", "agent", "agent_version", "audio_format", "from", "to",
                          "carrier_call_id", "stream_id", "custom_parameters", "started_at"]
    assert body["from"] == "+15551230001"


def test_optional_details_are_left_out_when_unset() -> None:
    assert c.CallEnded(reason="caller_hangup").encode() == {
        "reason": "caller_hangup", "duration_ms": None, "audio_in_ms": None, "audio_out_ms": None,
        "outbound_dropped": None, "carrier": None, "carrier_call_id": None, "stream_id": None}
    assert c.CommandClear().encode() == {}
    assert "detail" not in c.SessionError(call_id=CID, code="x", message="y").encode()


def test_unknown_keys_are_ignored_by_readers() -> None:
    mark = c.CarrierMark.parse(b'{"name":"m1","item_id":"i1","played_bytes":8,"cleared":false,"v2_field":1}')
    assert mark == c.CarrierMark(name="m1", item_id="i1", played_bytes=8, cleared=False)
    assert c.parse_command("clear", b"") == c.CommandClear()


@pytest.mark.parametrize(("contract", "body", "problem"), [
    (c.CallStarted, b"not json", "not valid JSON"),
    (c.CallStarted, b"[1]", "JSON object"),
    (c.CallStarted, b'{"call_id": "bad id!", "carrier": "t", "agent": "a", "audio_format": "audio/pcmu",'
                    b' "started_at": "2026-12-07T05:30:00+00:00"}', "call_id"),
    (c.CallStarted, b'{"call_id": "c1", "carrier": "t", "agent": "a", "audio_format": "audio/mp3",'
                    b' "started_at": "2026-12-07T05:30:00+00:00"}', "audio_format"),
    (c.CallStarted, b'{"call_id": "c1", "carrier": "t", "agent": "a", "audio_format": "audio/pcmu",'
                    b' "started_at": "yesterday"}', "started_at"),
    (c.CallStarted, b'{"call_id": "c1"}', "carrier"),
    (c.CallEnded, b'{"duration_ms": 3}', "reason"),
    (c.CarrierMark, b'{"name": "m", "played_bytes": -1, "cleared": false}', "played_bytes"),
    (c.CarrierMark, b'{"name": "m", "played_bytes": "many", "cleared": false}', "played_bytes"),
    (c.CarrierDtmf, b'{"digit": "12"}', "digit"),
    (c.CarrierDtmf, b'{"digit": "x"}', "digit"),
    (c.CommandTransfer, b'{"reason": "transfer"}', "to"),
    (c.CommandPlay, b'{"audio": "***"}', "base64"),
    (c.SessionError, b'{"call_id": "c1", "code": "x"}', "message"),
    (c.SessionHandover, b'{"call_id": "c1", "owner": "i", "epoch": -1}', "epoch"),
    (c.CommandReplay, b'{"from_bytes": -5}', "from_bytes"),
    (c.CommandReplay, b'{}', "from_bytes"),
    (c.CommandDtmf, b'{"digits": ""}', "digits"),
    (c.CommandDtmf, b'{"digits": "12x"}', "digits"),
    (c.CarrierAmd, b'{"carrier": "twilio"}', "answered_by"),
    (c.CarrierDetached, b'{"stream_id": "MZ1"}', "reason"),
    (c.ToolResult, b'{"control": {"verb": "hangup"}}', "output"),
    (c.ToolResult, b'{"output": 1, "control": {"to": "x"}}', "verb"),
])
def test_bad_bodies_raise_one_error_type_naming_the_problem(contract: Any, body: bytes, problem: str) -> None:
    with pytest.raises(c.ContractError) as info:
        contract.parse(body)
    assert problem in str(info.value)
    assert isinstance(info.value, PermanentError) and isinstance(info.value, SwitchboardError)
    assert isinstance(info.value, ValueError)
    assert info.value.message_name == contract.MESSAGE


def test_unknown_verbs_and_session_events_are_errors() -> None:
    with pytest.raises(c.ContractError, match="unknown command verb"):
        c.parse_command("explode", b"{}")
    with pytest.raises(c.ContractError, match="unknown session event"):
        c.parse_session_event("bench", b"{}")
    assert c.parse_session_event("handover", SAMPLES["SessionHandover"][0].encode()) == SAMPLES["SessionHandover"][0]


def test_construction_is_strict() -> None:
    with pytest.raises(ValueError):
        c.CarrierDtmf(digit="99")
    with pytest.raises(ValueError):
        c.CallEnded(reason="x", unknown_detail=1)  # type: ignore[call-arg]
