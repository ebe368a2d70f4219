"""Tool argument parsing, structured errors, control directives and the summary (no I/O)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from services.session.bargein import PlaybackTracker
from services.session.control import PendingControl
from services.session.summary import CallStats
from services.session.tools import error_output, parse_arguments
from shared.contracts import CommandDtmf, CommandHangup, CommandTransfer


def test_parse_arguments() -> None:
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments("") == {}
    assert parse_arguments(None) == {}
    with pytest.raises(ValueError):
        parse_arguments("{not json")
    with pytest.raises(ValueError, match="object"):
        parse_arguments("[1, 2]")


def test_error_output_shape() -> None:
    assert error_output(504, "too slow") == {"error": {"code": 504, "message": "too slow"}}


async def test_control_fires_after_the_goodbye_response_and_its_playback() -> None:
    fired: list[tuple[str, dict[str, Any]]] = []

    async def execute(verb: str, command: CommandHangup | CommandTransfer | CommandDtmf) -> None:
        fired.append((verb, command.encode()))

    playback = PlaybackTracker(8)
    control = PendingControl(playback, execute, response_timeout=10, play_slack=5)
    control.arm({"verb": "hangup"}, "sb_resp_3", None)
    control.on_response_created("resp_other", None)       # a VAD response is not the goodbye
    control.on_response_created("resp_bye", "sb_resp_3")
    playback.on_audio_delta("bye_item", "resp_bye", base64.b64encode(b"\xff" * 800).decode())
    control.on_response_done("resp_other")
    control.on_response_done("resp_bye")
    await asyncio.sleep(0.05)
    assert fired == []  # audio not yet confirmed played
    await playback.on_mark("bye_item", 800, False)
    for _ in range(50):
        if fired:
            break
        await asyncio.sleep(0.01)
    assert fired == [("hangup", {"reason": "agent_hangup"})]
    await control.cancel()


async def test_control_safety_timeout_and_transfer_payload() -> None:
    fired: list[tuple[str, dict[str, Any]]] = []

    async def execute(verb: str, command: CommandHangup | CommandTransfer | CommandDtmf) -> None:
        fired.append((verb, command.encode()))

    control = PendingControl(PlaybackTracker(8), execute, response_timeout=0.05)
    assert control.arm({"verb": "dance"}, "e1", None) is None
    assert control.arm({"verb": "transfer"}, "e1", None) is None  # nowhere to transfer to
    control.arm({"verb": "transfer", "to": "+15550000000"}, "e1", None)
    await asyncio.sleep(0.3)
    assert fired == [("transfer", {"reason": "transfer", "to": "+15550000000"})]


def test_summary_sums_usage_and_counts_turns() -> None:
    stats = CallStats("CA1", "receptionist")
    stats.user_turns = 2
    stats.on_response_done({"status": "completed", "usage": {"input_tokens": 10, "output_tokens": 5,
                                                              "input_token_details": {"audio_tokens": 7}}})
    stats.on_response_done({"status": "cancelled", "usage": {"input_tokens": 1, "output_tokens": 2,
                                                              "input_token_details": {"audio_tokens": 1}}})
    stats.on_response_done({"status": "completed", "usage": None})
    summary = stats.summary(tool_calls=[{"name": "x"}], first_audio_ms=[100.0, 300.0], events={"client": 3},
                            flow_state=None, ended_reason="caller_hangup")
    assert summary["usage"] == {"input_tokens": 11, "output_tokens": 7, "input_token_details": {"audio_tokens": 8}}
    assert summary["turns"] == {"user": 2, "assistant": 3, "responses": {"completed": 2, "cancelled": 1}}
    assert summary["durations"]["first_audio_p50_ms"] == 200.0
    assert summary["ended_reason"] == "caller_hangup"


async def test_dtmf_control_is_sent_at_once_and_bad_digits_are_refused() -> None:
    fired: list[tuple[str, dict[str, Any]]] = []

    async def execute(verb: str, command: CommandHangup | CommandTransfer | CommandDtmf) -> None:
        fired.append((verb, command.encode()))

    control = PendingControl(PlaybackTracker(8), execute, response_timeout=10)
    assert control.arm({"verb": "dtmf", "digits": "12x"}, "e1", None) is None
    assert control.arm({"verb": "dtmf"}, "e1", None) is None
    assert control.arm({"verb": "dtmf", "digits": "4321#"}, "e1", None) is None  # nothing waits for a goodbye
    for _ in range(50):
        if fired:
            break
        await asyncio.sleep(0.01)
    assert fired == [("dtmf", {"digits": "4321#"})]
    assert control.directive is None and control.fired == []  # a later hangup/transfer still arms
    await control.cancel()
