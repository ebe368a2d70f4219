"""The tool model, wire types and argument validation (no I/O)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tools import receptionist
from services.tools.framework import InvalidArguments, Tool, ToolContext, tool, tools_in_module
from services.tools.settings import ToolsSettings
from services.tools.validation import ArgumentValidator
from services.tools.worker import load_tools
from shared.bus import Headers
from shared.contracts import CallInfo, ContractError, ToolRequest, ToolResult

OBJ: dict[str, Any] = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}


async def _echo(ctx: ToolContext, x: int) -> dict[str, Any]:
    return {"x": x, "tool": ctx.tool}


def _ctx() -> ToolContext:
    return ToolContext(tool="echo", call=CallInfo(), tool_call_id=None, deadline=time.monotonic() + 5,
                       settings=ToolsSettings())


def test_tool_built_without_decorator_gives_registry_spec() -> None:
    t = Tool(name="echo", description="Echo x.", parameters=OBJ, fn=_echo, timeout_ms=1234, background=True)
    spec = t.spec
    assert (spec.name, spec.timeout_ms, spec.background, spec.idempotent, spec.control) == \
        ("echo", 1234, True, True, False)
    assert spec.realtime_tool() == {"type": "function", "name": "echo", "description": "Echo x.",
                                    "parameters": OBJ}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "bad name"}, "must match"),
    ({"name": "a.b"}, "must match"),
    ({"description": "  "}, "description"),
    ({"parameters": {"type": "string"}}, "type object"),
    ({"parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}, "invalid parameters"),
    ({"timeout_ms": 0}, "timeout_ms"),
])
def test_tool_rejects_bad_definitions(kwargs: dict[str, Any], fragment: str) -> None:
    base: dict[str, Any] = {"name": "echo", "description": "Echo.", "parameters": OBJ, "fn": _echo}
    with pytest.raises(ValueError, match=fragment):
        Tool(**{**base, **kwargs})


def test_tool_rejects_sync_function() -> None:
    def sync(ctx: ToolContext) -> None:
        return None

    with pytest.raises(ValueError, match="async"):
        Tool(name="s", description="Sync.", parameters={"type": "object"}, fn=sync)  # type: ignore[arg-type]


def test_decorator_takes_name_and_first_docstring_paragraph() -> None:
    @tool(parameters=OBJ, timeout_ms=900)
    async def double_it(ctx: ToolContext, x: int) -> int:
        """Double a number
        for the caller.

        Not part of the description.
        """
        return 2 * x

    assert isinstance(double_it, Tool)
    assert double_it.name == "double_it"
    assert double_it.description == "Double a number for the caller."
    assert double_it.timeout_ms == 900


async def test_call_passes_only_declared_arguments_and_wraps_output() -> None:
    t = Tool(name="echo", description="Echo.", parameters=OBJ, fn=_echo)
    result = await t(_ctx(), {"x": 3, "unexpected": True})
    assert result == ToolResult({"x": 3, "tool": "echo"})
    assert result.encode() == {"output": {"x": 3, "tool": "echo"}}


async def test_call_rejects_output_that_is_not_json() -> None:
    async def bad(ctx: ToolContext) -> object:
        return object()

    t = Tool(name="bad", description="Bad.", parameters={"type": "object"}, fn=bad)
    with pytest.raises(TypeError):
        await t(_ctx(), {})


def test_request_parse_full_and_round_trip() -> None:
    body = {"arguments": {"x": 1}, "tool_call_id": "call_1", "deadline_ms": 2500,
            "call": {"call_id": "c1", "from": "+15551230001", "to": "+15559870000", "agent": "receptionist"}}
    req = ToolRequest.parse(json.dumps(body).encode())
    assert req.arguments == {"x": 1}
    assert req.tool_call_id == "call_1"
    assert req.call == CallInfo("c1", "+15551230001", "+15559870000", "receptionist")
    assert req.deadline_ms == 2500
    assert ToolRequest.parse(json.dumps(req.encode()).encode()) == req


def test_request_accepts_arguments_as_json_string() -> None:
    req = ToolRequest.parse(b'{"arguments": "{\\"x\\": 2}"}')
    assert req.arguments == {"x": 2}
    assert req.call == CallInfo()
    assert req.deadline_ms is None


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'{"arguments": [1]}', b'{"arguments": "{nope"}', b'{"deadline_ms": "soon"}',
    b'{"deadline_ms": true}', b'{"call": "x"}', b'{"call": {"from": 5}}', b'{"tool_call_id": 7}',
])
def test_request_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ContractError) as info:  # the worker answers it as InvalidArguments (400)
        ToolRequest.parse(body)
    assert info.value.problem.startswith("The ") and info.value.problem.endswith(".")


def test_deadline_relative_absolute_and_default() -> None:
    now = 1000.0
    assert ToolRequest({}, deadline_ms=1500).deadline_at(now, 5000) == pytest.approx(1001.5)
    assert ToolRequest({}).deadline_at(now, 5000) == pytest.approx(1005.0)
    # absolute times count from the wall clock now, however long ago the request was read
    read_at = time.monotonic() - 10
    absolute = time.time() * 1000 + 3000
    assert ToolRequest({}, deadline_ms=absolute).deadline_at(read_at, 5000) == pytest.approx(
        time.monotonic() + 3, abs=0.5)


def test_deadline_header_is_absolute_and_the_earlier_deadline_binds() -> None:
    read_at = time.monotonic()
    soon = time.time() * 1000 + 1000
    request = ToolRequest.parse(b'{"arguments": {}, "deadline_ms": 5000}', {Headers.DEADLINE: str(int(soon))})
    assert request.deadline_epoch_ms == int(soon) and request.deadline_ms == 5000
    assert request.deadline_at(read_at, 9000) == pytest.approx(read_at + 1, abs=0.1)
    # a request read long after its header deadline (the worker was stalled) is already due
    stale = ToolRequest.parse(b"{}", {Headers.DEADLINE: str(int(time.time() * 1000 - 2000))})
    assert stale.deadline_at(time.monotonic(), 5000) < time.monotonic()
    # a relative budget shorter than the header's wins
    assert ToolRequest({}, deadline_ms=200, deadline_epoch_ms=soon).deadline_at(read_at, 9000) == pytest.approx(
        read_at + 0.2)
    assert ToolRequest.parse(b"{}", {"Other": "x"}).deadline_epoch_ms is None


@pytest.mark.parametrize("value", ["soon", "nan", "inf", ""])
def test_deadline_header_must_be_a_number(value: str) -> None:
    with pytest.raises(ContractError, match="Switchboard-Deadline"):
        ToolRequest.parse(b"{}", {Headers.DEADLINE: value})


def test_result_reply_parsing() -> None:
    r = ToolResult.parse({"output": {"a": 1}, "control": {"verb": "hangup"}})
    assert r.control == {"verb": "hangup"}
    assert ToolResult.parse(r.encode()) == r
    bad: Any
    for bad in ({}, [], {"output": 1, "control": {"to": "x"}}, {"output": 1, "control": "hangup"}):
        with pytest.raises(ValueError):
            ToolResult.parse(bad)


def test_receptionist_specs() -> None:
    tools = {t.name: t for t in tools_in_module(receptionist)}
    assert set(tools) == {"lookup_customer", "check_availability", "book_appointment", "cancel_appointment",
                          "end_call", "transfer_to_human"}
    for t in tools.values():
        assert "phone" not in t.parameters.get("required", [])
    assert tools["book_appointment"].parameters["required"] == ["name", "date", "time"]
    assert tools["end_call"].spec.control and tools["transfer_to_human"].spec.control
    assert not tools["book_appointment"].spec.control
    assert tools["book_appointment"].stores_result and tools["cancel_appointment"].stores_result
    assert not tools["lookup_customer"].stores_result and not tools["end_call"].stores_result


def test_load_tools_errors() -> None:
    assert next(t.name for t in load_tools(["services.tools.receptionist"])) == "lookup_customer"
    with pytest.raises(ValueError, match="defines no tools"):
        load_tools(["services.tools.clinic"])
    with pytest.raises(ImportError):
        load_tools(["services.tools.no_such_module"])


BOOK = ArgumentValidator(next(t for t in tools_in_module(receptionist) if t.name == "book_appointment").parameters)


@pytest.mark.parametrize("args, message", [
    ({"date": "2030-01-02", "time": "10:00"}, "I still need the name."),
    ({"name": "Ann", "time": "10:00"}, "I still need the date."),
    ({"name": "Ann", "date": "02/01/2030", "time": "10:00"},
     "The date 02/01/2030 is not valid: expected a date as YYYY-MM-DD."),
    ({"name": "Ann", "date": "2030-02-30", "time": "10:00"},
     "The date 2030-02-30 is not valid: expected a date as YYYY-MM-DD."),
    ({"name": "Ann", "date": "2030-01-02", "time": "10am"},
     "The time 10am is not valid: expected a 24-hour time as HH:MM."),
    ({"name": 5, "date": "2030-01-02", "time": "10:00"}, "The name must be a string."),
    ({"name": "", "date": "2030-01-02", "time": "10:00"}, "The name is too short or too small."),
])
def test_validation_messages_are_speakable(args: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArguments) as info:
        BOOK.validate(args)
    assert info.value.message == message
    assert info.value.code == 400


@settings(deadline=None)
@given(st.integers(0, 23), st.integers(0, 59))
def test_every_24h_time_is_accepted(hour: int, minute: int) -> None:
    BOOK.validate({"name": "Ann", "date": "2030-01-02", "time": f"{hour:02d}:{minute:02d}"})


@settings(deadline=None)
@given(st.text(max_size=8))
def test_time_pattern_rejects_everything_else(text: str) -> None:
    valid = (len(text) == 5 and text[2] == ":" and text[:2].isascii() and text[:2].isdigit()
             and text[3:].isascii() and text[3:].isdigit() and int(text[:2]) < 24 and int(text[3:]) < 60)
    try:
        BOOK.validate({"name": "Ann", "date": "2030-01-02", "time": text})
        accepted = True
    except InvalidArguments:
        accepted = False
    assert accepted == valid
