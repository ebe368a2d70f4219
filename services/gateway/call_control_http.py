"""Vonage and Plivo call control (:class:`~services.gateway.call_control.CallControl`) over their documented REST
APIs with httpx.

Neither vendor's SDK fits here: the Vonage Voice SDK (``vonage``) is not a dependency, so the application JWT
comes from ``vonage-jwt`` (the JWT library of Vonage's SDK); the plivo SDK is synchronous and fixes its API base
URL in module constants (``plivo/rest/client.py``), so it cannot be pointed at another server without patching
the library.

- Vonage Voice API (https://developer.vonage.com/en/api/voice), ``Authorization: Bearer <application JWT>``:
  transfer ``PUT /v1/calls/{uuid}`` ``{"action": "transfer", "destination": {"type": "ncco", "ncco": [connect]}}``;
  hangup ``PUT /v1/calls/{uuid}`` ``{"action": "hangup"}``; DTMF ``PUT /v1/calls/{uuid}/dtmf`` ``{"digits"}``;
  outbound ``POST /v1/calls`` with ``answer_url`` and ``machine_detection``.
- Plivo Voice API (https://www.plivo.com/docs/voice/api/call), HTTP Basic ``auth_id:auth_token``: transfer
  ``POST /v1/Account/{auth_id}/Call/{call_uuid}/`` ``{"legs": "aleg", "aleg_url"}`` (the URL answers Plivo XML
  ``<Dial>``: ``POST /plivo/transfer?to=`` on this gateway, so ``SWITCHBOARD_PUBLIC_URL`` is needed); hangup
  ``DELETE /v1/Account/{auth_id}/Call/{call_uuid}/``; DTMF ``POST …/Call/{call_uuid}/DTMF/`` ``{"digits", "leg"}``;
  outbound ``POST /v1/Account/{auth_id}/Call/`` with ``answer_url`` and ``machine_detection``.

Vonage and Plivo write numbers without the leading ``+`` (E.164 digits only).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import httpx
from vonage_jwt import JwtClient

from services.gateway.call import CallStart
from services.gateway.call_control import OutboundCall

__all__ = ["PLIVO_API", "VONAGE_API", "PlivoControl", "VonageControl", "vonage_endpoint"]

VONAGE_API = "https://api.nexmo.com"
PLIVO_API = "https://api.plivo.com"
_TIMEOUT = httpx.Timeout(10.0)


def _digits(number: str) -> str:
    return number.removeprefix("+")


def _uuid(start: CallStart, what: str) -> str:
    if not start.carrier_call_id:
        raise ValueError(f"no call uuid to {what}")
    return start.carrier_call_id


def vonage_endpoint(to: str) -> dict[str, str]:
    """The NCCO ``connect`` endpoint for ``to``: ``{"type": "sip", "uri"}`` for a ``sip:`` URI, else
    ``{"type": "phone", "number"}`` (https://developer.vonage.com/en/voice/voice-api/ncco-reference#endpoint-types-and-values)."""
    if to.startswith(("sip:", "sips:")):
        return {"type": "sip", "uri": to}
    return {"type": "phone", "number": _digits(to)}


class VonageControl:
    """The Vonage Voice API for one application (``SWITCHBOARD_VONAGE_APPLICATION_ID`` / ``_PRIVATE_KEY``)."""

    def __init__(self, application_id: str, private_key: str, api_url: str | None = None) -> None:
        self.jwt = JwtClient(application_id, private_key)
        self.base = (api_url or VONAGE_API).rstrip("/")

    async def _request(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        token = self.jwt.generate_application_jwt().decode()
        async with httpx.AsyncClient(timeout=_TIMEOUT) as client:
            response = await client.request(method, self.base + path, json=body,
                                            headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        return response

    async def transfer(self, start: CallStart, to: str) -> None:
        """Transfer the call to an inline NCCO that connects ``to``.

        Raises:
            ValueError: the call has no uuid; httpx.HTTPError: Vonage refused or was unreachable.
        """
        ncco = [{"action": "connect", "endpoint": [vonage_endpoint(to)]}]
        await self._request("PUT", f"/v1/calls/{_uuid(start, 'transfer')}",
                            {"action": "transfer", "destination": {"type": "ncco", "ncco": ncco}})

    async def hangup(self, start: CallStart) -> None:
        """``PUT /v1/calls/{uuid}`` ``{"action": "hangup"}``.

        Raises:
            ValueError: the call has no uuid; httpx.HTTPError: Vonage refused or was unreachable.
        """
        await self._request("PUT", f"/v1/calls/{_uuid(start, 'hang up')}", {"action": "hangup"})

    async def send_dtmf(self, start: CallStart, digits: str) -> None:
        """``PUT /v1/calls/{uuid}/dtmf`` ``{"digits"}``.

        Raises:
            ValueError: the call has no uuid; httpx.HTTPError: Vonage refused or was unreachable.
        """
        await self._request("PUT", f"/v1/calls/{_uuid(start, 'send DTMF on')}/dtmf", {"digits": digits})

    async def dial(self, call: OutboundCall) -> str | None:
        """``POST /v1/calls``: Vonage fetches the NCCO from ``answer_url`` (POST) on answer; with ``amd_url`` it
        posts the ``human``/``machine`` status event there (``machine_detection: continue``). Returns the uuid.

        Raises:
            httpx.HTTPError: Vonage refused or was unreachable.
        """
        body: dict[str, Any] = {"to": [{"type": "phone", "number": _digits(call.to)}],
                                "from": {"type": "phone", "number": _digits(call.from_)},
                                "answer_url": [call.answer_url], "answer_method": "POST"}
        if call.amd_url:
            body.update(machine_detection="continue", event_url=[call.amd_url], event_method="POST")
        created = (await self._request("POST", "/v1/calls", body)).json()
        return str(created["uuid"]) if isinstance(created, dict) and created.get("uuid") else None


class PlivoControl:
    """The Plivo Voice API for one (sub)account (``SWITCHBOARD_PLIVO_AUTH_ID`` / ``_AUTH_TOKEN``); transfers need
    ``public_url`` (``SWITCHBOARD_PUBLIC_URL``): Plivo fetches the transfer's ``<Dial>`` from this gateway."""

    def __init__(self, auth_id: str, auth_token: str, api_url: str | None = None, *,
                 public_url: str | None = None) -> None:
        self.auth = httpx.BasicAuth(auth_id, auth_token)
        self.account = f"{(api_url or PLIVO_API).rstrip('/')}/v1/Account/{auth_id}"
        self.public_url = public_url.rstrip("/") if public_url else None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=_TIMEOUT, auth=self.auth) as client:
            response = await client.request(method, self.account + path, json=body)
        response.raise_for_status()
        return response

    async def transfer(self, start: CallStart, to: str) -> None:
        """Transfer the A leg to ``aleg_url`` = ``<public url>/plivo/transfer?to=…`` (Plivo XML ``<Dial>``).

        Raises:
            ValueError: the call has no uuid or no public URL is set; httpx.HTTPError: Plivo refused.
        """
        if not self.public_url:
            raise ValueError("no SWITCHBOARD_PUBLIC_URL: Plivo fetches the transfer XML from the gateway")
        url = f"{self.public_url}/plivo/transfer?{urlencode({'to': to})}"
        await self._request("POST", f"/Call/{_uuid(start, 'transfer')}/",
                            {"legs": "aleg", "aleg_url": url, "aleg_method": "POST"})

    async def hangup(self, start: CallStart) -> None:
        """``DELETE /v1/Account/{auth_id}/Call/{call_uuid}/``.

        Raises:
            ValueError: the call has no uuid; httpx.HTTPError: Plivo refused or was unreachable.
        """
        await self._request("DELETE", f"/Call/{_uuid(start, 'hang up')}/")

    async def send_dtmf(self, start: CallStart, digits: str) -> None:
        """``POST …/Call/{call_uuid}/DTMF/`` ``{"digits", "leg": "aleg"}``.

        Raises:
            ValueError: the call has no uuid; httpx.HTTPError: Plivo refused or was unreachable.
        """
        await self._request("POST", f"/Call/{_uuid(start, 'send DTMF on')}/DTMF/", {"digits": digits, "leg": "aleg"})

    async def dial(self, call: OutboundCall) -> str | None:
        """``POST /v1/Account/{auth_id}/Call/``: Plivo fetches the ``<Stream>`` XML from ``answer_url`` on answer;
        with ``amd_url``: ``machine_detection: true`` and ``machine_detection_url``. Returns the ``request_uuid``.

        Raises:
            httpx.HTTPError: Plivo refused or was unreachable.
        """
        body: dict[str, Any] = {"from": _digits(call.from_), "to": _digits(call.to), "answer_url": call.answer_url,
                                "answer_method": "POST"}
        if call.amd_url:
            body.update(machine_detection="true", machine_detection_url=call.amd_url,
                        machine_detection_method="POST")
        created = (await self._request("POST", "/Call/", body)).json()
        uuid = created.get("request_uuid") if isinstance(created, dict) else None
        return str(uuid[0] if isinstance(uuid, list) and uuid else uuid) if uuid else None
