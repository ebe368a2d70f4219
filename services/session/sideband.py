"""An OpenAI SIP call's session: accept through the Realtime calls API, then serve the call over its sideband.

The audio of a SIP call flows between the SIP trunk and the model directly
(https://platform.openai.com/docs/guides/realtime-sip); Switchboard sees the call's events only. For a
``call.<id>.started`` with carrier ``openai_sip`` (``services.gateway.openai_sip``), the session that takes the
call:

1. builds the agent's session config (:func:`~services.session.agent.session_config`, tools from the registry)
   and POSTs it to ``<api>/realtime/calls/{call_id}/accept`` with the openai SDK (``client.realtime.calls``;
   ``call_id`` is ``started.carrier_call_id``). The audio formats are left out: SIP negotiates the codec. An
   accept that fails (the gateway rejected the call meanwhile, the call is unknown or gone) ends the call with
   ``session_lost`` unless it already ended;
2. serves the call as :class:`~services.session.call.Call` does, over the sideband WebSocket
   ``<api as ws(s)>/realtime?call_id={call_id}`` instead of a new session: every event in and out is logged,
   tools, flows and control run as usual. On attach it sends ``session.update`` itself (the sideband may not
   start with ``session.created``), then greets; a dropped sideband is reconnected like a model socket;
3. differs where the media path differs: there is no caller audio on the bus (no carrier-silence watchdog),
   the model interrupts itself on caller speech (server VAD ``interrupt_response``; no ``command.clear`` or
   truncation from here), an agent's spoken disclosure cannot be played by the gateway, so the model says it as
   the first words of the greeting (no ``session.disclosure`` proof record: a known gap), and
   ``command.hangup`` / ``command.transfer`` become ``/hangup`` and ``/refer`` (``target_uri`` ``tel:…`` or the
   SIP URI as given) once the goodbye played (``output_audio_buffer.stopped``, at most :data:`PLAY_OUT_S`);
   a dropped sideband, or a call taken over by another instance, re-attaches to the live conversation at OpenAI
   (nothing is rebuilt from the log, no second greeting);
4. publishes ``call.<id>.ended`` (the gateway has no leg to end): ``caller_hangup`` when the sideband closes
   normally (code 1000: the SIP call is over), ``agent_hangup`` / ``transfer`` after the API call; a call that
   ends for another reason (``call.<id>.ended`` from elsewhere) is hung up through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import openai

from shared import subjects, tool_registry
from shared.bus import Bus
from shared.contracts import CallEnded, CallStarted, CommandTransfer, Contract
from shared.endreasons import EndReason

from .agent import AgentSpec, session_config
from .call import Call
from .model import ModelClosedError, ModelSocket
from .options import CallOptions, ModelEndpoint
from .ownership import Takeover

__all__ = ["PLAY_OUT_S", "SIP_CARRIER", "SidebandCall", "sideband_url", "transfer_uri", "without_formats"]

log = logging.getLogger(__name__)

SIP_CARRIER = "openai_sip"
"""The ``started.carrier`` of calls served by :class:`SidebandCall`."""
_NORMAL_CLOSE = 1000
PLAY_OUT_S = 15.0
"""Seconds a hangup or transfer waits for the agent audio still playing on the SIP leg
(``output_audio_buffer.stopped``)."""
_ENDING_WAIT_S = 5.0
"""Seconds the reader waits, after the sideband closed under our hangup/refer, for that command to end the call
(no reconnect attempt meanwhile)."""


def sideband_url(api_url: str, call_id: str) -> str:
    """The sideband WebSocket of ``call_id`` for the REST base ``api_url``
    (``https://api.openai.com/v1`` → ``wss://api.openai.com/v1/realtime?call_id=…``).

    Raises:
        ValueError: ``api_url`` is not an http(s) URL.
    """
    parts = urlsplit(api_url.rstrip("/"))
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the OpenAI API URL must be http(s), not {api_url!r}")
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + "/realtime", urlencode({"call_id": call_id}), ""))


def transfer_uri(to: str) -> str:
    """A SIP REFER target for a transfer destination: a SIP/tel URI as given, an E.164 number as ``tel:``."""
    return to if to.startswith(("sip:", "sips:", "tel:")) else f"tel:{to}"


def without_formats(session: dict[str, Any]) -> dict[str, Any]:
    """``session`` without ``audio.input.format`` / ``audio.output.format`` (SIP negotiates the codec)."""
    audio = session.get("audio")
    if not isinstance(audio, dict):
        return session
    stripped = {k: ({n: v for n, v in part.items() if n != "format"} if isinstance(part, dict) else part)
                for k, part in audio.items()}
    return {**session, "audio": stripped}


class SidebandCall(Call):
    """The session of one OpenAI SIP call (see the module docstring).

    Args:
        api_url: REST base of the Realtime calls API (``Settings.effective_openai_api_url``).
        Others as :class:`~services.session.call.Call`; ``endpoint`` gives the API key and model, its URL is
        replaced by the call's sideband URL.
    """

    def __init__(self, bus: Bus, spec: AgentSpec, info: CallStarted, endpoint: ModelEndpoint,
                 options: CallOptions | None = None, *, api_url: str, takeover: Takeover | None = None) -> None:
        if not info.carrier_call_id:
            raise ValueError(f"call {info.call_id}: an OpenAI SIP call needs carrier_call_id")
        if spec.disclosure is not None:  # nobody but the model can speak on a SIP call
            greeting = f"{spec.disclosure.text} {spec.greeting or ''}".strip()
            spec = spec.model_copy(update={"disclosure": None, "greeting": greeting})
        self.sip_call_id = info.carrier_call_id
        sideband = ModelEndpoint(sideband_url(api_url, self.sip_call_id), endpoint.api_key, endpoint.model)
        # no carrier audio on the bus: the sideband's close, not a silence watchdog, says when the call is over
        options = dataclasses.replace(options or CallOptions(), carrier_idle_timeout=math.inf)
        super().__init__(bus, spec, info, sideband, options, takeover=takeover)
        self.conversation_persists = True  # the call's session lives at OpenAI: re-attach, never rebuild
        self.played_out = asyncio.Event()
        """Set while no agent audio is playing on the SIP leg (``output_audio_buffer.started`` clears it,
        ``stopped``/``cleared`` set it): a hangup or transfer waits for it, so the goodbye is heard."""
        self.played_out.set()
        self.client = openai.AsyncOpenAI(api_key=endpoint.api_key or "local", base_url=api_url, max_retries=2,
                                         timeout=10.0)
        self._started_at = time.monotonic()
        self._ended_published = False
        self._sip_over = False
        """The SIP side ended the call (sideband closed normally, or our hangup/refer went through)."""
        self._ending = False
        """A hangup/refer of ours is in flight: the sideband's close that follows is not the caller's."""

    async def run(self) -> None:
        """Accept the call (unless taken over: accepted already), then serve it (:meth:`Call.run`)."""
        try:
            if self.takeover is None:
                await self._accept()
        except openai.OpenAIError as exc:
            log.warning("call %s: accept of %s failed: %s", self.call_id, self.sip_call_id, exc)
            await self._publish_ended(EndReason.SESSION_LOST, error=f"accept failed: {exc}")
            await self.client.close()
            return
        try:
            await super().run()
        finally:
            if not self._sip_over and not self.handed_over:
                with contextlib.suppress(openai.OpenAIError):
                    await self.client.realtime.calls.hangup(self.sip_call_id)
            await self.client.close()

    async def _accept(self) -> None:
        registry = await tool_registry.load(self.bus.js)
        self.registry.update(registry)
        session, missing = session_config(self.spec, audio_format=self.info.audio_format, registry=registry,
                                          model=self.endpoint.model, state_id=self.flow.state)
        if missing:
            log.warning("call %s: tools not in the registry, left out: %s", self.call_id, missing)
        await self.client.realtime.calls.accept(self.sip_call_id, **without_formats(session))
        log.info("call %s: accepted OpenAI SIP call %s", self.call_id, self.sip_call_id)

    async def send(self, event: dict[str, Any], *, setup: bool = False) -> None:
        """:meth:`Call.send`, with ``session.update`` stripped of audio formats (SIP negotiates the codec)."""
        if event.get("type") == "session.update" and isinstance(event.get("session"), dict):
            event = {**event, "session": without_formats(event["session"])}
        await super().send(event, setup=setup)

    async def _read(self, sock: ModelSocket) -> None:
        await self._send_session_update()  # the sideband need not open with session.created
        try:
            await super()._read(sock)
        except ModelClosedError:
            if sock.close_code == _NORMAL_CLOSE and not self.ended.is_set() and not self._ending:
                log.info("call %s: the sideband closed normally: the SIP call is over", self.call_id)
                self._sip_over = True
                await self._publish_ended(EndReason.CALLER_HANGUP, close_code=_NORMAL_CLOSE)
                await self.end(EndReason.CALLER_HANGUP)
            elif self._ending:  # our hangup/refer closed it: let the command finish ending the call
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ended.wait(), _ENDING_WAIT_S)
            raise

    async def _on_server_event(self, etype: str, ev: dict[str, Any]) -> None:
        if etype == "session.created":
            return  # :meth:`_read` sent the session.update already
        if etype == "response.output_audio.delta":  # played on the SIP leg, which OpenAI tracks itself: no
            self.hooks.output_audio()  # playback to follow here, so caller speech never sends clear/truncate
            return
        if etype == "output_audio_buffer.started":
            self.played_out.clear()
        elif etype in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
            self.played_out.set()
        await super()._on_server_event(etype, ev)

    async def _command(self, verb: str, command: Contract) -> None:
        await super()._command(verb, command)  # logged on call.<id>.command.<verb> as for every call
        if verb not in ("hangup", "transfer") or self._sip_over or self._ending:
            return
        self._ending = True
        with contextlib.suppress(TimeoutError):  # let the goodbye play out on the SIP leg (bounded)
            await asyncio.wait_for(self.played_out.wait(), PLAY_OUT_S)
        try:
            if isinstance(command, CommandTransfer):
                await self.client.realtime.calls.refer(self.sip_call_id, target_uri=transfer_uri(command.to))
                reason, to = EndReason.TRANSFER, command.to
            else:
                await self.client.realtime.calls.hangup(self.sip_call_id)
                reason, to = EndReason.AGENT_HANGUP, None
        except openai.OpenAIError as exc:
            log.warning("call %s: %s of %s failed: %s", self.call_id, verb, self.sip_call_id, exc)
            self._ending = False
            return
        self._sip_over = True
        await self._publish_ended(reason, transfer_to=to)
        await self.end(reason)

    async def _publish_ended(self, reason: str, **detail: Any) -> None:
        """``call.<id>.ended`` once (not when it is in the CALLS stream already, e.g. from the gateway)."""
        if self._ended_published:
            return
        self._ended_published = True
        if await self.bus.last_message(subjects.CALLS_STREAM, subjects.call_ended(self.call_id)) is not None:
            return
        ended = CallEnded(reason=reason, duration_ms=(time.monotonic() - self._started_at) * 1000.0,
                          carrier=SIP_CARRIER, carrier_call_id=self.sip_call_id, **detail)
        await self._call_event(subjects.call_ended(self.call_id), ended)
