"""Transfer a live call through the carrier's REST API (official SDKs), before the media stream closes.

Closing a ``<Connect><Stream>`` alone makes the carrier continue the call's markup after the stream — there is
nothing after it, so the caller was hung up on. With a carrier client configured, ``command.transfer``
(``{"to": "+1…" | "sip:…"}``) first asks the carrier to move the call, then the stream closes:

- Twilio (https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource): update the call
  (``CallSid`` = ``carrier_call_id``) with TwiML ``<Dial>`` (a ``<Sip>`` noun for ``sip:`` targets), built with
  ``VoiceResponse``; the twilio SDK's ``Client`` under ``SWITCHBOARD_TWILIO_ACCOUNT_SID`` and the auth token.
- Telnyx (https://developers.telnyx.com/api-reference/call-commands/transfer-call): ``POST
  /v2/calls/{call_control_id}/actions/transfer`` with ``to``; the telnyx SDK's ``AsyncTelnyx`` under
  ``SWITCHBOARD_TELNYX_API_KEY``.

``SWITCHBOARD_TWILIO_API_URL`` / ``SWITCHBOARD_TELNYX_API_URL`` point the SDKs at another base URL (a test fake).
A failed transfer is logged; the stream still closes (the call ends as before). Vonage and Plivo have no client
here: their transfer closes the stream only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from twilio.twiml.voice_response import Dial, VoiceResponse

from services.gateway.call import CallStart

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["CallControl", "TelnyxControl", "TwilioControl", "controls_for", "dial_twiml", "transfer_or_log"]

log = logging.getLogger("services.gateway.call_control")


class CallControl(Protocol):
    """One carrier's call-control client."""

    async def transfer(self, start: CallStart, to: str) -> None:
        """Move the caller's leg of the call ``start`` describes to ``to`` (E.164 number or ``sip:`` URI).

        Raises:
            Exception: the carrier refused or was unreachable (the SDK's own error types).
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
        if not start.carrier_call_id:
            raise ValueError("no CallSid to transfer")
        call = self.client.calls(start.carrier_call_id)
        await asyncio.to_thread(call.update, twiml=dial_twiml(to))


class TelnyxControl:
    """Telnyx Call Control through the telnyx SDK's ``AsyncTelnyx``."""

    def __init__(self, api_key: str, api_url: str | None = None) -> None:
        from telnyx import AsyncTelnyx

        options: dict[str, Any] = {"api_key": api_key, "max_retries": 1}
        if api_url:
            options["base_url"] = api_url
        self.client = AsyncTelnyx(**options)

    async def transfer(self, start: CallStart, to: str) -> None:
        """``actions/transfer`` on ``call_control_id`` = ``start.carrier_call_id``.

        Raises:
            ValueError: the call has no call_control_id; telnyx.APIError: Telnyx refused.
        """
        if not start.carrier_call_id:
            raise ValueError("no call_control_id to transfer")
        await self.client.calls.actions.transfer(start.carrier_call_id, to=to)


def controls_for(settings: Settings) -> dict[str, CallControl]:
    """The call-control clients the settings configure, by carrier name."""
    controls: dict[str, CallControl] = {}
    if settings.twilio_account_sid and settings.twilio_auth_token:
        controls["twilio"] = TwilioControl(settings.twilio_account_sid, settings.twilio_auth_token,
                                           settings.twilio_api_url)
    if settings.telnyx_api_key:
        controls["telnyx"] = TelnyxControl(settings.telnyx_api_key, settings.telnyx_api_url)
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
