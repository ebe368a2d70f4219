"""Never two concurrent ``response.create``: queue them until the active response is done.

The Realtime API rejects a ``response.create`` while a response is in progress with the error
``conversation_already_has_active_response``
(https://platform.openai.com/docs/api-reference/realtime-server-events/error). Responses start either from our
``response.create`` (greeting, tool outputs, DTMF, rebuilt conversations) or from the server's own turn
detection (``create_response: true``), so the gate tracks both:

- busy = a response is active (``response.created`` seen, ``response.done`` not yet) or a create is in
  flight (sent, not yet answered by ``response.created`` or an error);
- :meth:`request` sends at once when idle, else queues (an identical queued create is not queued twice —
  two tool outputs finishing during one response need one new response, not two);
- ``response.done`` sends the next queued create; an ``error`` naming our create's ``event_id`` with code
  ``conversation_already_has_active_response`` puts it back at the head of the queue.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["ResponseGate"]

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class ResponseGate:
    """Serializes ``response.create`` per call (see the module docstring).

    Args:
        send: sends (and logs) a client event.
        prefix: ``event_id`` prefix of the creates this gate sends.
    """

    def __init__(self, send: Send, *, prefix: str = "sb_resp_") -> None:
        self._send = send
        self._prefix = prefix
        self._ids = itertools.count(1)
        self._queue: deque[dict[str, Any]] = deque()
        self.active: str | None = None
        """Id of the response in progress."""
        self.in_flight: dict[str, Any] | None = None
        """Our create that the server has not answered yet."""
        self.sent_ids: list[str] = []
        """Every create event id sent, in order (for tests and the summary)."""

    @property
    def busy(self) -> bool:
        """A response is active or our create is in flight."""
        return self.active is not None or self.in_flight is not None

    @property
    def queued(self) -> int:
        """Creates waiting for the active response to finish."""
        return len(self._queue)

    async def request(self, response: dict[str, Any] | None = None) -> str:
        """Ask for a response (``response`` = the optional ``response.create.response`` object).

        Returns the create's ``event_id`` (of the already-queued identical create when coalesced).
        """
        body = {"response": response} if response else {}
        for queued in self._queue:
            if {k: v for k, v in queued.items() if k not in ("type", "event_id")} == body:
                return str(queued["event_id"])
        event = {"type": "response.create", "event_id": f"{self._prefix}{next(self._ids)}", **body}
        self._queue.append(event)
        await self._pump()
        return str(event["event_id"])

    async def on_created(self, response_id: str) -> str | None:
        """A ``response.created`` arrived; returns the event id of our create it answers (None: server VAD)."""
        answered = self.in_flight["event_id"] if self.in_flight is not None else None
        self.in_flight = None
        self.active = response_id
        return str(answered) if answered is not None else None

    async def on_done(self, response_id: str | None) -> None:
        """A ``response.done`` arrived: the next queued create (if any) is sent.

        Only one response is in progress at a time in the default conversation, so any ``response.done``
        ends the active one.
        """
        if self.active not in (None, response_id, "unknown"):
            log.debug("response.done for %s while %s was active", response_id, self.active)
        self.active = None
        await self._pump()

    async def on_error(self, code: str | None, client_event_id: str | None) -> None:
        """An ``error`` arrived; when it is about our in-flight create, requeue it (busy) or drop it."""
        if self.in_flight is None or client_event_id != self.in_flight.get("event_id"):
            return
        event, self.in_flight = self.in_flight, None
        if code == "conversation_already_has_active_response":
            self._queue.appendleft(event)
            if self.active is None:
                # the server had a response we have not seen created yet; its response.done will pump
                self.active = "unknown"
        else:
            log.warning("response.create %s rejected: %s", event["event_id"], code)
        await self._pump()

    def reset(self) -> None:
        """The model connection dropped: nothing is active or in flight (queued creates stay)."""
        self.active = None
        self.in_flight = None

    async def pump(self) -> None:
        """Send the next queued create when idle (after a reconnect the call pumps explicitly).

        When the send fails with :class:`ConnectionError` (the model connection is down) the create goes back
        to the head of the queue.
        """
        await self._pump()

    async def _pump(self) -> None:
        if self.busy or not self._queue:
            return
        event = self._queue.popleft()
        self.in_flight = event
        try:
            await self._send(event)
        except ConnectionError:
            self.in_flight = None
            self._queue.appendleft(event)
            return
        self.sent_ids.append(str(event["event_id"]))
