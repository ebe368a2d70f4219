"""What a tool or keypad result does to one call's conversation and flow.

A tool's result goes back to the model as a ``function_call_output`` item (a background tool's final result, whose
call the model already saw answered, as a system message) followed by a ``response.create``
(https://platform.openai.com/docs/guides/realtime-function-calling). A result (not the ``started`` reply of a
background tool) also drives the agent's flow: a transition sends ``session.update`` with the new state's
instructions and tools, applies the state's keypad capture and publishes ``call.<id>.session.state_changed``
(:class:`~shared.contracts.SessionStateChanged`). A tool result's ``control`` (hang up, transfer after the reply)
is armed on the response it asked for (:mod:`.control`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from shared import subjects
from shared.contracts import Contract, SessionStateChanged, ToolResult

from .control import PendingControl
from .flow import FlowMachine
from .responses import ResponseGate
from .tools import Outcome, model_output

__all__ = ["Turns"]


class Turns:
    """Results into the conversation (see the module docstring).

    Args:
        call_id: the call.
        flow: the call's flow machine.
        gate: asks for responses (one at a time).
        control: arms a result's ``control`` directive on the response it asked for.
        deliver: sends a client event once the model session is ready (never dropped).
        session_for: the ``session`` object of ``session.update`` for a flow state id.
        apply_capture: applies the current flow state's keypad capture.
        publish: publishes a contract on a call subject (in log order).
    """

    def __init__(self, call_id: str, *, flow: FlowMachine, gate: ResponseGate, control: PendingControl,
                 deliver: Callable[[dict[str, Any]], Awaitable[None]],
                 session_for: Callable[[str | None], dict[str, Any]],
                 apply_capture: Callable[[], Awaitable[None]],
                 publish: Callable[[str, Contract], Awaitable[None]]) -> None:
        self.call_id = call_id
        self.flow = flow
        self.gate = gate
        self.control = control
        self._deliver = deliver
        self._session_for = session_for
        self._apply_capture = apply_capture
        self._publish = publish

    async def tool_result(self, tool_call_id: str, name: str, outcome: Outcome, phase: str) -> None:
        """A tool call's outcome (``phase``: ``"sync"``, ``"started"`` or ``"final"`` for a background tool)."""
        output = model_output(outcome)
        if phase == "final":
            item: dict[str, Any] = {"type": "message", "role": "system", "content": [{
                "type": "input_text", "text": f"The background tool {name} (call {tool_call_id}) "
                                              f"finished with: {json.dumps(output, ensure_ascii=False)}"}]}
        else:
            item = {"type": "function_call_output", "call_id": tool_call_id,
                    "output": json.dumps(output, ensure_ascii=False)}
        await self._deliver({"type": "conversation.item.create", "item": item})
        result = outcome if isinstance(outcome, ToolResult) and phase != "started" else None
        if result is not None:
            changed = self.flow.on_tool_result(name, output)
            if changed is not None:
                await self.change_state(changed, name, tool_call_id)
        create_id = await self.gate.request()
        if result is not None and result.control:
            self.control.arm(result.control, create_id, None)

    async def keypad_result(self, text: str, tool: str, output: Any, ok: bool) -> None:
        """A keypad entry's result → a system message and a response; a success drives the flow."""
        await self._deliver({"type": "conversation.item.create", "item": {
            "type": "message", "role": "system", "content": [{"type": "input_text", "text": text}]}})
        if ok:
            changed = self.flow.on_tool_result(tool, output)
            if changed is not None:
                await self.change_state(changed, tool, "")
        await self.gate.request()

    async def change_state(self, changed: tuple[str, str], name: str, tool_call_id: str) -> None:
        """Apply a flow transition ``(previous, state)`` caused by tool ``name``."""
        previous, state = changed
        await self._deliver({"type": "session.update", "session": self._session_for(state)})
        await self._apply_capture()
        await self._publish(subjects.session_event(self.call_id, "state_changed"), SessionStateChanged(
            call_id=self.call_id, from_=previous, to=state, tool=name, tool_call_id=tool_call_id))
