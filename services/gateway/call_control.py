"""Call control through the carrier's REST API: transfer, hang up, send DTMF and place outbound calls.

Closing a ``<Connect><Stream>`` alone makes the carrier continue the call's markup after the stream — there is
nothing after it, so a transfer would hang up on the caller, and a stream opened with ``keepCallAlive`` (Plivo)
would leave the leg up after an agent hangup. With a carrier client configured:

- ``command.transfer`` (``{"to": "+1…" | "sip:…"}``) first asks the carrier to move the call, then the stream
  closes;
- ``command.hangup``: the call ends (``agent_hangup``), then the carrier is asked to end the leg, then the
  stream closes;
- ``command.dtmf`` (``{"digits"}``): the carrier plays the tones to the far end (:meth:`CallControl.send_dtmf`);
- ``POST /calls/outbound``: :meth:`CallControl.dial` creates the call (:mod:`services.gateway.dialer`).

Twilio (https://www.twilio.com/docs/voice/api/call-resource) and Telnyx (https://developers.telnyx.com/api-reference)
go through their official SDKs here; Vonage and Plivo through :mod:`services.gateway.call_control_http`.
``SWITCHBOARD_TWILIO_API_URL`` / ``SWITCHBOARD_TELNYX_API_URL`` point the SDKs at another base URL (a test fake).
A failed request is logged (:func:`transfer_or_log`, :func:`hangup_or_log`, :func:`dtmf_or_log`); the call goes on
as it would without a client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twilio.twiml.voice_response import Dial, VoiceResponse

from services.gateway.call import CallStart
from shared.contracts import CommandDtmf, CommandHangup, CommandTransfer

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["CallControl", "CarrierUnsupportedError", "OutboundCall", "TelnyxControl", "TwilioControl",
           "control_or_log", "controls_for", "dial_twiml", "dtmf_or_log", "hangup_or_log", "transfer_or_log"]

log = logging.getLogger("services.gateway.call_control")


class CarrierUnsupportedError(RuntimeError):
    """The carrier has no API for this action on a live call (e.g. Twilio and DTMF out)."""


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """An outbound call to place (:meth:`CallControl.dial`).

    Attributes:
        call_id: our call id, chosen before the call exists; it travels in the answer markup / URL so the stream
            opens under it.
        to / from_: E.164 numbers (``from_``: a number of the carrier account).
        agent: the agent spec the call runs.
        answer_url: this gateway's voice webhook for the carrier, with ``?agent=&call_id=`` (Telnyx, Vonage,
            Plivo fetch their stream markup from it when the callee answers).
        twiml: Twilio only: the ``<Connect><Stream>`` document given inline to ``calls.create``.
        amd_url: where the carrier posts the answering-machine detection result; None: no detection.
    """

    call_id: str
    to: str
    from_: str
    agent: str
    answer_url: str
    twiml: str | None = None
    amd_url: str | None = None


class CallControl(Protocol):
    """One carrier's call-control client."""

    async def transfer(self, start: CallStart, to: str) -> None:
        """Move the caller's leg of the call ``start`` describes to ``to`` (E.164 number or ``sip:`` URI).

        Raises:
            Exception: the carrier refused or was unreachable (the SDK's / httpx's own error types).
        """

    async def hangup(self, start: CallStart) -> None:
        """End the call's leg at the carrier.

        Raises:
            Exception: the carrier refused or was unreachable.
        """

    async def send_dtmf(self, start: CallStart, digits: str) -> None:
        """Play ``digits`` (``0-9 * # A-D``) to the far end of the live call.

        Raises:
            CarrierUnsupportedError: the carrier cannot send digits on a live call.
            Exception: the carrier refused or was unreachable.
        """

    async def dial(self, call: OutboundCall) -> str | None:
        """Create the outbound call; returns the carrier's id for it (None when the carrier's answer has none).

        Raises:
            Exception: the carrier refused or was unreachable.
        """


def dial_twiml(to: str) -> str:
    """``<Response><Dial>to</Dial></Response>`` (``<Dial><Sip>`` for a ``sip:`` URI)."""
    response = VoiceResponse()
    if to.startswith(("sip:", "sips:")):
        dial = Dial()
        dial.sip(to)
        response.append(dial)
    else:
        response.dial(to)
    return str(response.to_xml())


def _need(value: str | None, what: str) -> str:
    if not value:
        raise ValueError(f"no {what}")
    return value


class TwilioControl:
    """Twilio calls REST API through the twilio SDK (its ``Client`` is synchronous: run in a thread)."""

    def __init__(self, account_sid: str, auth_token: str, api_url: str | None = None) -> None:
        from twilio.rest import Client

        self.client = Client(account_sid, auth_token)
        if api_url:
            self.client.api.base_url = api_url.rstrip("/")

    async def transfer(self, start: CallStart, to: str) -> None:
        """Update the call with ``<Dial>`` TwiML (``CallSid`` = ``start.carrier_call_id``).

        Raises:
            ValueError: the call has no CallSid; twilio.base.exceptions.TwilioException: Twilio refused.
        """
        call = self.client.calls(_need(start.carrier_call_id, "CallSid to transfer"))
        await asyncio.to_thread(call.update, twiml=dial_twiml(to))

    async def hangup(self, start: CallStart) -> None:
        """Update the call with ``Status=completed`` (https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource).

        Raises:
            ValueError: the call has no CallSid; twilio.base.exceptions.TwilioException: Twilio refused.
        """
        call = self.client.calls(_need(start.carrier_call_id, "CallSid to hang up"))
        await asyncio.to_thread(call.update, status="completed")

    async def send_dtmf(self, start: CallStart, digits: str) -> None:
        """Not available: Twilio's REST API has no "send digits" on a live call. Digits are played only by TwiML
        (``<Play digits>``, https://www.twilio.com/docs/voice/twiml/play#attributes-digits) or by ``SendDigits``
        when an outbound call is created (https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource);
        updating the live call with ``<Play digits>`` TwiML would end its ``<Connect><Stream>``, cutting the agent
        off, so nothing is sent.

        Raises:
            CarrierUnsupportedError: always.
        """
        raise CarrierUnsupportedError("Twilio cannot send DTMF on a live call without ending its media stream")

    async def dial(self, call: OutboundCall) -> str | None:
        """``calls.create(to, from_, twiml=<Connect><Stream>…)``; with ``amd_url``: ``machine_detection="Enable"``,
        ``async_amd=True`` and ``async_amd_status_callback`` (https://www.twilio.com/docs/voice/answering-machine-detection).
        Returns the CallSid.

        Raises:
            twilio.base.exceptions.TwilioException: Twilio refused.
        """
        options: dict[str, Any] = {"to": call.to, "from_": call.from_, "twiml": _need(call.twiml, "TwiML")}
        if call.amd_url:
            options.update(machine_detection="Enable", async_amd="true", async_amd_status_callback=call.amd_url,
                           async_amd_status_callback_method="POST")
        created = await asyncio.to_thread(self.client.calls.create, **options)
        return str(created.sid) if created.sid else None


class TelnyxControl:
    """Telnyx Call Control and TeXML through the telnyx SDK's ``AsyncTelnyx``.

    ``account_sid`` / ``texml_app_id`` (``SWITCHBOARD_TELNYX_ACCOUNT_SID`` / ``_TEXML_APP_ID``) are needed for
    outbound calls only.
    """

    def __init__(self, api_key: str, api_url: str | None = None, *, account_sid: str | None = None,
                 texml_app_id: str | None = None) -> None:
        from telnyx import AsyncTelnyx

        options: dict[str, Any] = {"api_key": api_key, "max_retries": 1}
        if api_url:
            options["base_url"] = api_url
        self.client = AsyncTelnyx(**options)
        self.account_sid = account_sid
        self.texml_app_id = texml_app_id

    async def transfer(self, start: CallStart, to: str) -> None:
        """``actions/transfer`` on ``call_control_id`` = ``start.carrier_call_id``
        (https://developers.telnyx.com/api-reference/call-commands/transfer-call).

        Raises:
            ValueError: the call has no call_control_id; telnyx.APIError: Telnyx refused.
        """
        await self.client.calls.actions.transfer(_need(start.carrier_call_id, "call_control_id to transfer"), to=to)

    async def hangup(self, start: CallStart) -> None:
        """``actions/hangup`` (https://developers.telnyx.com/api-reference/call-commands/hangup-call).

        Raises:
            ValueError: the call has no call_control_id; telnyx.APIError: Telnyx refused.
        """
        await self.client.calls.actions.hangup(_need(start.carrier_call_id, "call_control_id to hang up"))

    async def send_dtmf(self, start: CallStart, digits: str) -> None:
        """``actions/send_dtmf`` with ``digits`` (https://developers.telnyx.com/api-reference/call-commands/send-dtmf).

        Raises:
            ValueError: the call has no call_control_id; telnyx.APIError: Telnyx refused.
        """
        await self.client.calls.actions.send_dtmf(_need(start.carrier_call_id, "call_control_id for DTMF"),
                                                  digits=digits)

    async def dial(self, call: OutboundCall) -> str | None:
        """TeXML ``POST /texml/Accounts/{account_sid}/Calls`` with ``Url`` = ``answer_url`` (Telnyx fetches the
        ``<Connect><Stream>`` TeXML from it on answer) and, with ``amd_url``, ``MachineDetection=Enable``,
        ``AsyncAmd`` and ``AsyncAmdStatusCallback``
        (https://developers.telnyx.com/api-reference/texml-rest-commands/initiate-an-outbound-call).
        Returns the ``call_sid`` of the answer when it carries one.

        Raises:
            ValueError: no account sid configured; telnyx.APIError: Telnyx refused.
        """
        # the body is the union of three TypedDicts the SDK cannot tell apart: its wire names are given directly
        body: dict[str, Any] = {"Url": call.answer_url, "UrlMethod": "POST", "To": call.to, "From": call.from_}
        if self.texml_app_id:
            body["ApplicationSid"] = self.texml_app_id
        if call.amd_url:
            body.update(MachineDetection="Enable", AsyncAmd=True, AsyncAmdStatusCallback=call.amd_url,
                        AsyncAmdStatusCallbackMethod="POST")
        created = await self.client.texml.accounts.calls.calls(
            _need(self.account_sid, "SWITCHBOARD_TELNYX_ACCOUNT_SID for outbound calls"), body=body)  # type: ignore[arg-type]
        sid = created.to_dict().get("call_sid")
        return str(sid) if sid else None


def controls_for(settings: Settings) -> dict[str, CallControl]:
    """The call-control clients the settings configure, by carrier name."""
    from services.gateway.call_control_http import PlivoControl, VonageControl

    controls: dict[str, CallControl] = {}
    if settings.twilio_account_sid and settings.twilio_auth_token:
        controls["twilio"] = TwilioControl(settings.twilio_account_sid, settings.twilio_auth_token,
                                           settings.twilio_api_url)
    if settings.telnyx_api_key:
        controls["telnyx"] = TelnyxControl(settings.telnyx_api_key, settings.telnyx_api_url,
                                           account_sid=settings.telnyx_account_sid,
                                           texml_app_id=settings.telnyx_texml_app_id)
    if settings.vonage_application_id and settings.vonage_private_key:
        controls["vonage"] = VonageControl(settings.vonage_application_id, settings.vonage_private_key,
                                           settings.vonage_api_url)
    if settings.plivo_auth_id and settings.plivo_auth_token:
        controls["plivo"] = PlivoControl(settings.plivo_auth_id, settings.plivo_auth_token, settings.plivo_api_url,
                                         public_url=settings.public_url)
    return controls


async def transfer_or_log(control: CallControl, start: CallStart, to: object) -> bool:
    """Ask ``control`` to transfer; True when the carrier accepted, False (logged) otherwise."""
    if not isinstance(to, str) or not to:
        log.warning("transfer without a target on %s call %s", start.carrier, start.carrier_call_id)
        return False
    try:
        await control.transfer(start, to)
    except Exception:  # the SDK's errors vary by vendor; the stream still closes
        log.exception("%s transfer of %s to %s failed", start.carrier, start.carrier_call_id, to)
        return False
    log.info("%s call %s transferred to %s", start.carrier, start.carrier_call_id, to)
    return True


async def hangup_or_log(control: CallControl, start: CallStart) -> bool:
    """Ask ``control`` to end the leg; True when the carrier accepted, False (logged) otherwise."""
    try:
        await control.hangup(start)
    except Exception:  # the SDK's errors vary by vendor; the stream closes anyway
        log.exception("%s hangup of %s failed", start.carrier, start.carrier_call_id)
        return False
    log.info("%s call %s hung up through the API", start.carrier, start.carrier_call_id)
    return True


async def dtmf_or_log(control: CallControl, start: CallStart, digits: str) -> bool:
    """Ask ``control`` to send ``digits``; True when the carrier accepted, False (logged, without the digits: they
    may be an account number) otherwise."""
    try:
        await control.send_dtmf(start, digits)
    except CarrierUnsupportedError as exc:
        log.warning("%s call %s: %d DTMF digit(s) not sent: %s", start.carrier, start.carrier_call_id, len(digits),
                    exc)
        return False
    except Exception:
        log.exception("%s DTMF on %s failed", start.carrier, start.carrier_call_id)
        return False
    log.info("%s call %s: sent %d DTMF digit(s)", start.carrier, start.carrier_call_id, len(digits))
    return True


async def control_or_log(control: CallControl | None, start: CallStart, command: object) -> bool:
    """Run ``command`` (:class:`~shared.contracts.CommandTransfer` / ``CommandHangup`` / ``CommandDtmf``) through
    ``control`` — the bridge's ``on_control`` (:class:`~services.gateway.call.CallBridge`); True when the carrier
    accepted. Without a client (None) nothing is sent: the stream closing alone is the transfer or hangup, and a
    DTMF command is logged as not sent."""
    if control is None:
        if isinstance(command, CommandDtmf):
            log.warning("%s call %s: no call control configured: DTMF not sent", start.carrier, start.carrier_call_id)
        return False
    if isinstance(command, CommandTransfer):
        return await transfer_or_log(control, start, command.to)
    if isinstance(command, CommandHangup):
        return await hangup_or_log(control, start)
    if isinstance(command, CommandDtmf):
        return await dtmf_or_log(control, start, command.digits)
    raise TypeError(f"not a call-control command: {type(command).__name__}")
