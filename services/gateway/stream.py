"""The one carrier read loop: read a WebSocket message, decode it, dispatch it, close with a reason.

Every carrier route (Twilio, Telnyx, Vonage, Plivo, the browser) runs a :class:`CarrierStream` subclass that
only says how to handle one ASGI message (:meth:`CarrierStream.on_message`); the loop around it is shared:

- no call started within ``start_timeout_s`` of the upgrade → close 1008 (``no start within … s``);
- a disconnect ends the call by its close code (:func:`disconnect_reason`): ``caller_hangup`` for
  :data:`HANGUP_CLOSE_CODES` (1000, 1001, 1005), ``protocol_error`` for :data:`PROTOCOL_CLOSE_CODES` (the
  WebSocket layer rejected a frame: 1002, 1003, 1007, 1009), else ``lost`` (1006: no close handshake; 1011/1012:
  a server went away) — never ``caller_hangup`` for something the caller did not do;
- a :class:`~shared.carriers.frames.CarrierProtocolError` (bad input) ends the call with ``protocol_error``
  and closes the socket with 1008 and the error's reason;
- any other exception (the bus failed under us) ends this call only with ``lost`` (``error``: the exception
  type) and closes 1011.

End reasons: :class:`shared.endreasons.EndReason`.

RFC 6455 §7.4.1 (https://www.rfc-editor.org/rfc/rfc6455#section-7.4.1) defines the close codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketState

from services.gateway.call import CallBridge, CallStart, CarrierSink
from services.gateway.call_control import CallControl, control_or_log
from shared.bus import Bus
from shared.carriers.frames import CarrierProtocolError
from shared.endreasons import EndReason

__all__ = ["HANGUP_CLOSE_CODES", "INTERNAL_ERROR", "POLICY_VIOLATION", "PROTOCOL_CLOSE_CODES", "START_TIMEOUT_S",
           "CarrierStream", "close_socket", "disconnect_reason", "receive_before"]

log = logging.getLogger("services.gateway.stream")

POLICY_VIOLATION = 1008
"""RFC 6455 §7.4.1 close code for a message that violates the protocol."""
INTERNAL_ERROR = 1011
"""RFC 6455 §7.4.1 close code for an unexpected condition on the server (e.g. the bus failed)."""
PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})
"""RFC 6455 §7.4.1 close codes that mean the peer broke the protocol (framing error, unacceptable data type,
invalid payload data, message too big); a disconnect with one of them ends the call with ``protocol_error``."""
START_TIMEOUT_S = 10.0
"""Seconds a carrier socket may stay open without its start message before it is closed with 1008."""


HANGUP_CLOSE_CODES = frozenset({1000, 1001, 1005})
"""RFC 6455 §7.4.1 close codes of a peer that ended the connection on purpose (normal closure, going away, no
status given): the caller hung up."""


def disconnect_reason(message: Mapping[str, Any]) -> tuple[EndReason, dict[str, Any]]:
    """End reason and ``ended`` detail for an ASGI ``websocket.disconnect`` ``message`` (its ``code``):
    ``protocol_error`` for :data:`PROTOCOL_CLOSE_CODES`, ``caller_hangup`` for :data:`HANGUP_CLOSE_CODES`,
    else ``lost`` (1006: the connection broke without a close handshake; 1011/1012: a server went away); the
    detail carries ``close_code`` (and ``error`` unless the caller hung up)."""
    code = message.get("code")
    if code in PROTOCOL_CLOSE_CODES:
        return EndReason.PROTOCOL_ERROR, {"close_code": code, "error": f"websocket closed with {code}"}
    if code in HANGUP_CLOSE_CODES:
        return EndReason.CALLER_HANGUP, {"close_code": code}
    return EndReason.LOST, {"close_code": code, "error": f"websocket closed with {code}"}


async def receive_before(ws: WebSocket, deadline: float | None) -> Mapping[str, Any]:
    """The next ASGI message of ``ws``; with ``deadline`` (event-loop time) set, at most until then.

    Raises:
        TimeoutError: the deadline passed first.
    """
    if deadline is None:
        return await ws.receive()
    async with asyncio.timeout_at(deadline):
        return await ws.receive()


async def close_socket(ws: WebSocket, code: int, reason: str) -> None:
    """Close a carrier socket with ``code`` and ``reason`` unless it is already disconnected."""
    if ws.application_state != WebSocketState.DISCONNECTED:
        await ws.close(code, reason)


class CarrierStream:
    """The state machine of one accepted carrier WebSocket; subclasses implement :meth:`on_message`.

    ``calls`` is the gateway's registry of live calls (the bridge is added on start, removed at the end);
    ``idle_s`` (``SWITCHBOARD_CARRIER_IDLE_S``) is passed to the bridge's silence watchdog; ``controls`` are the
    carriers' call-control clients (a transfer goes through the call's carrier's one first);
    ``session_lost_s`` (``SWITCHBOARD_SESSION_LOST_S``; None: off) ends a call no session owns any more
    (:meth:`CallBridge._watch_owner`).
    """

    carrier: str = "carrier"
    """Name used in logs (and, by subclasses, as ``CallStart.carrier``)."""

    def __init__(self, ws: WebSocket, bus: Bus, *, default_agent: str, max_outbound_chunks: int = 1000,
                 calls: dict[str, CallBridge] | None = None, audio_in_ms: int = 40,
                 start_timeout_s: float = START_TIMEOUT_S, idle_s: float | None = None,
                 controls: Mapping[str, CallControl] | None = None, session_lost_s: float | None = None) -> None:
        self.ws = ws
        self.session_lost_s = session_lost_s
        self.controls = controls or {}
        """Call-control clients by carrier name (transfers through the carrier's REST API)."""
        self.bus = bus
        self.default_agent = default_agent
        self.max_outbound_chunks = max_outbound_chunks
        self.calls = calls if calls is not None else {}
        self.audio_in_ms = audio_in_ms
        self.start_timeout_s = start_timeout_s
        self.idle_s = idle_s
        self.bridge: CallBridge | None = None

    async def run(self) -> None:
        """Read messages until the stream is over: a stop message, a disconnect, bad input, the start timeout,
        or the bridge closing the socket (agent hangup, transfer, silence)."""
        start_by = asyncio.get_running_loop().time() + self.start_timeout_s
        try:
            while True:
                try:
                    message = await receive_before(self.ws, start_by if self.bridge is None else None)
                except TimeoutError:
                    raise CarrierProtocolError(f"no start within {self.start_timeout_s:g} s") from None
                if message["type"] == "websocket.disconnect":
                    if self.bridge is not None:
                        reason, detail = disconnect_reason(message)
                        await self.bridge.end(reason, **detail)
                    break
                if not await self.on_message(message):
                    break
        except CarrierProtocolError as exc:
            await self._protocol_error(exc.reason)
        except RuntimeError as exc:  # starlette: receive after the bridge closed the socket (and ended the call)
            log.debug("%s socket closed: %s", self.carrier, exc)
            if self.bridge is not None:
                await self.bridge.end(EndReason.LOST, error="socket closed under the reader")
        except Exception as exc:  # the bus failed under us (e.g. NATS unreachable): end this call only
            log.exception("%s stream failed", self.carrier)
            if self.bridge is not None:
                await self.bridge.end(EndReason.LOST, error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await close_socket(self.ws, INTERNAL_ERROR, "gateway error")
        finally:
            await self.on_close()
            if self.bridge is not None:
                self.calls.pop(self.bridge.call_id, None)
                self.bridge.detach_context()

    async def on_message(self, message: Mapping[str, Any]) -> bool:
        """Handle one ASGI ``websocket.receive`` message (``text`` or ``bytes``); False when the stream is over.

        Raises:
            CarrierProtocolError: bad input (the loop closes with 1008 and ends the call).
        """
        raise NotImplementedError

    async def on_close(self) -> None:
        """Release what the subclass holds besides the bridge (called once, after the loop)."""

    async def open_call(self, sink: CarrierSink, start: CallStart, *, call_id: str | None = None,
                        resumed: bool = False) -> CallBridge:
        """Create, register and open the call's :class:`CallBridge` (publishes ``call.<id>.started``, or
        ``call.<id>.carrier.resumed`` when ``resumed``). ``call_id``: the id our TwiML chose (None: a new one).

        Raises:
            CarrierProtocolError: a call already started on this socket, or ``call_id`` is already live here.
        """
        if self.bridge is not None:
            raise CarrierProtocolError("second start")
        if call_id is not None and call_id in self.calls:
            raise CarrierProtocolError("call_id is already live on this gateway")
        control = self.controls.get(start.carrier)
        bridge = CallBridge(self.bus, sink, start, max_outbound_chunks=self.max_outbound_chunks,
                            audio_in_ms=self.audio_in_ms, idle_s=self.idle_s,
                            on_control=functools.partial(control_or_log, control, start),
                            call_id=call_id, resumed=resumed, session_lost_s=self.session_lost_s)
        self.bridge = bridge
        self.calls[bridge.call_id] = bridge
        await bridge.open()
        return bridge

    async def hang_up(self) -> bool:
        """The carrier said the caller hung up: end the call, close the socket (1000); returns False."""
        if self.bridge is not None:
            await self.bridge.end(EndReason.CALLER_HANGUP)
        with contextlib.suppress(Exception):  # the carrier may already have closed its side
            await close_socket(self.ws, 1000, "stop")
        return False

    async def _protocol_error(self, reason: str) -> None:
        log.warning("%s protocol error: %s", self.carrier, reason)
        if self.bridge is not None:
            await self.bridge.end(EndReason.PROTOCOL_ERROR, error=reason)
        try:
            await close_socket(self.ws, POLICY_VIOLATION, reason)
        except Exception as exc:  # already gone
            log.debug("close after protocol error failed: %s", exc)
