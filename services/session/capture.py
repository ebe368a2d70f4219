"""PCI-safe keypad capture: in a flow state with ``capture:`` the caller's digits go to a tool, never to the model.

A state such as ``{id: payment, capture: {kind: card, length: 16, tool: take_payment}}``
(:class:`~services.session.agent.CaptureSpec`) makes the session, while the call is in it:

- send ``call.<id>.command.capture {active: true, state}`` so the gateway publishes keypad digits on
  ``call.<id>.keypad`` — core NATS, captured by no stream — instead of ``call.<id>.carrier.dtmf`` (which the CALLS
  stream stores); leaving the state sends ``{active: false}``;
- stop forwarding caller audio to the model (a card number read aloud is neither heard nor logged nor
  transcribed); the state's instructions tell the model to ask for the keypad (``AgentSpec.instructions_for``);
- collect the digits in memory: ``*`` starts over, ``#`` submits early, ``length`` digits submit;
- send them to the named tool with the tool client (:func:`services.tools.client.call_tool`), sealed for that
  tool and call (:mod:`shared.sealed`): ``arguments = {kind, length, sealed}``;
- publish ``call.<id>.session.capture`` (:class:`CaptureRecord`: how many digits, a masked form — the last four of
  a card, nothing of other codes — and whether the tool accepted them), and hand the model only the tool's
  result as a system message followed by a response. A successful result then drives the flow's transitions
  like any tool result.

The digits live in one list of this object until they are sealed; nothing logs them (log lines carry the masked
form only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from services.tools.client import call_tool
from shared import subjects
from shared.bus import Bus
from shared.contracts import CallInfo, CommandCapture, Contract, SessionCapture, ToolRequest, ToolResult
from shared.errors import ServiceCallError
from shared.sealed import SealError, seal
from shared.tool_registry import ToolSpec

from .agent import CaptureSpec
from .tools import DEFAULT_TIMEOUT_MS, Outcome, model_output

__all__ = ["CaptureRecord", "KeypadCapture", "mask"]

log = logging.getLogger(__name__)

Command = Callable[[str, Contract], Awaitable[None]]
Publish = Callable[[str, Contract], Awaitable[None]]
Tell = Callable[[str, str, Any, bool], Awaitable[None]]
"""``tell(text, tool, output, ok)``: give the model ``text`` (the result) and, when ``ok``, apply the flow."""

DIGITS = "0123456789"


def mask(kind: str, digits: str) -> str:
    """The only form of an entry that may be logged: ``card`` → ``•`` for all but the last four (none shown
    below 10 digits); anything else → ``•`` per digit."""
    if kind == "card" and len(digits) >= 10:
        return "•" * (len(digits) - 4) + digits[-4:]
    return "•" * len(digits)


@dataclass(frozen=True)
class CaptureRecord:
    """The ``call.<id>.session.capture`` payload: one submitted keypad entry, masked.

    Attributes:
        call_id, state, tool, kind: where and what.
        digits: how many digits were entered.
        masked: :func:`mask` of the entry.
        ok: the tool accepted it.
        error_code: the tool client's error code when not (400 invalid, 503 no worker, …).
        tool_call_id: the id the request carried (``capture_<n>``).
    """

    call_id: str
    state: str
    tool: str
    kind: str
    digits: int
    masked: str
    ok: bool
    error_code: int | str | None
    tool_call_id: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload."""
        return asdict(self)


class KeypadCapture:
    """The keypad capture of one call (see the module docstring).

    Args:
        bus: the session's bus (tool requests).
        call: the tool request's ``call`` object.
        registry: tool specs by name (timeout); a tool missing from it gets 5 s.
        key: ``SWITCHBOARD_CAPTURE_KEY`` (None: entries are refused with 503 and the model is told).
        command: publishes ``call.<id>.command.<verb>``.
        publish: publishes a call event.
        tell: hands the result to the model (:data:`Tell`).
    """

    def __init__(self, *, bus: Bus, call: CallInfo, registry: dict[str, ToolSpec], key: str | None,
                 command: Command, publish: Publish, tell: Tell) -> None:
        self.bus = bus
        self.call = call
        self.registry = registry
        self.key = key
        self.command = command
        self.publish = publish
        self.tell = tell
        self.spec: CaptureSpec | None = None
        """The capture in force (None: not capturing)."""
        self.state: str | None = None
        self.withheld_bytes = 0
        """Caller audio not forwarded to the model while capturing."""
        self.records: list[CaptureRecord] = []
        self._digits: list[str] = []
        self._count = 0

    @property
    def active(self) -> bool:
        """A capture is in force: caller audio and digits must not reach the model."""
        return self.spec is not None

    async def apply(self, state: str | None, spec: CaptureSpec | None) -> None:
        """The call is now in ``state`` whose capture is ``spec``: start, keep or stop capturing."""
        if spec == self.spec and state == self.state:
            return
        was_active = self.active
        self.spec, self.state = spec, state
        self._digits.clear()
        if spec is not None:
            await self.command("capture", CommandCapture(active=True, state=state, kind=spec.kind))
        elif was_active:
            await self.command("capture", CommandCapture(active=False, state=state))

    async def press(self, digit: str) -> None:
        """One keypad digit while capturing (ignored when not): collect, start over (``*``) or submit."""
        spec = self.spec
        if spec is None:
            return
        if digit == "*":
            self._digits.clear()
        elif digit == "#":
            if self._digits:
                await self._submit(spec)
        elif digit in DIGITS and len(digit) == 1:
            self._digits.append(digit)
            if len(self._digits) >= spec.length:
                await self._submit(spec)

    async def _submit(self, spec: CaptureSpec) -> None:
        digits = "".join(self._digits)
        self._digits.clear()
        self._count += 1
        tool_call_id = f"capture_{self._count}"
        masked = mask(spec.kind, digits)
        outcome = await self._request(spec, digits, tool_call_id)
        del digits
        ok = isinstance(outcome, ToolResult)
        record = CaptureRecord(self.call.call_id or "", self.state or "", spec.tool, spec.kind,
                               len(masked), masked, ok, None if ok else getattr(outcome, "code", None),
                               tool_call_id)
        self.records.append(record)
        log.info("call %s: keypad entry %s → %s %s", record.call_id, masked, spec.tool, "ok" if ok else "refused")
        await self.publish(subjects.session_event(record.call_id, "capture"), SessionCapture(**record.to_dict()))
        output = model_output(outcome)
        what = "card number" if spec.kind == "card" else "number"
        await self.tell(f"The caller typed a {what} on the keypad ({masked}); it went straight to {spec.tool}, "
                        f"which answered: {json.dumps(output, ensure_ascii=False)}", spec.tool, output, ok)

    async def _request(self, spec: CaptureSpec, digits: str, tool_call_id: str) -> Outcome:
        if not self.key:
            log.error("call %s: keypad capture without SWITCHBOARD_CAPTURE_KEY; entry refused", self.call.call_id)
            return ServiceCallError(503, "Keypad entry is not available right now.")
        tool = self.registry.get(spec.tool) or ToolSpec(spec.tool, "", timeout_ms=DEFAULT_TIMEOUT_MS)
        try:
            sealed = seal(self.key, digits, call_id=self.call.call_id or "", tool=spec.tool)
        except SealError as exc:
            log.error("call %s: keypad capture key unusable: %s", self.call.call_id, exc)
            return ServiceCallError(503, "Keypad entry is not available right now.")
        request = ToolRequest({"kind": spec.kind, "length": len(digits), "sealed": sealed}, tool_call_id,
                              self.call, float(tool.timeout_ms))
        try:
            return await call_tool(self.bus, tool, request)
        except subjects.InvalidSubjectTokenError:
            return ServiceCallError(404, f"There is no tool called {spec.tool}.")
        except ServiceCallError as exc:
            return exc
