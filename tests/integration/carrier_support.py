"""A local fake of the carriers' call-control REST APIs (Twilio, Telnyx, Vonage, Plivo): records every request and
answers as the vendor documents, so the official SDKs (or our httpx clients) can be pointed at it.

Creating a call (``Calls.json``, TeXML ``Calls``, Vonage ``/v1/calls``, Plivo ``Call/``) answers at once and then,
like the carrier once the callee picks up, runs :attr:`FakeCarrierApi.on_dial` with a :class:`Dialed` (the test
connects a caller simulator to the gateway with it: fetch the answer URL or use the inline TwiML, open the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.gateway.server import serving_app

VONAGE_APP = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
"""A Vonage application id for tests."""
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
VONAGE_KEY = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
"""The application's RSA private key (PEM): the gateway signs its Voice API JWTs with it."""
VONAGE_PUBLIC = _KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
"""Its public key (verifies the JWTs the fake received)."""
PLIVO_ID = "MA" + "A" * 18
"""A Plivo auth id for tests."""


@dataclass(frozen=True)
class Dialed:
    """An outbound call the fake carrier "placed": what the create request asked for, and the id it answered."""

    carrier: str
    carrier_call_id: str
    to: str
    from_: str
    answer_url: str | None
    twiml: str | None
    amd_url: str | None


@dataclass
class FakeCarrierApi:
    """The recorded requests (``carrier``, ``action``, ``path``, form or JSON ``body``, ``auth``) and the base URL."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_targets: set[str] = field(default_factory=set)
    """Transfer targets and dialled numbers answered with the carrier's error (HTTP 4xx)."""
    url: str = ""
    hold: asyncio.Event | None = None
    """Set: each request is recorded, then answered only once the event is set (ordering tests)."""
    on_dial: Callable[[Dialed], Awaitable[object]] | None = None
    """Runs (in the background) after a create-call request was answered: the callee picks up."""
    dialed: list[Dialed] = field(default_factory=list)
    tasks: set[asyncio.Task[object]] = field(default_factory=set)

    def of(self, carrier: str, action: str) -> list[dict[str, Any]]:
        """The recorded requests of ``carrier`` for ``action`` (transfer, hangup, dtmf, dial)."""
        return [r for r in self.requests if r["carrier"] == carrier and r["action"] == action]

    async def _record(self, carrier: str, action: str, request: Request, body: Any) -> None:
        self.requests.append({"carrier": carrier, "action": action, "path": request.url.path, "body": body,
                              "method": request.method, "auth": request.headers.get("authorization")})
        if self.hold is not None:
            await self.hold.wait()

    def _placed(self, dialed: Dialed) -> None:
        self.dialed.append(dialed)
        if self.on_dial is not None:
            task: asyncio.Task[object] = asyncio.ensure_future(self.on_dial(dialed))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def app(self) -> FastAPI:
        app = FastAPI()
        self._twilio(app)
        self._telnyx(app)
        self._vonage(app)
        self._plivo(app)
        return app

    def _twilio(self, app: FastAPI) -> None:
        @app.post("/2010-04-01/Accounts/{account}/Calls.json")
        async def twilio_create(account: str, request: Request) -> JSONResponse:
            form = {k: str(v) for k, v in (await request.form()).items()}
            await self._record("twilio", "dial", request, form)
            if form.get("To") in self.fail_targets:
                return JSONResponse({"code": 21215, "message": "Geo Permission configuration is not permitting call",
                                     "status": 400}, status_code=400)
            sid = "CA" + secrets.token_hex(16)
            self._placed(Dialed("twilio", sid, form["To"], form["From"], form.get("Url"), form.get("Twiml"),
                                form.get("AsyncAmdStatusCallback")))
            return JSONResponse({"sid": sid, "account_sid": account, "to": form["To"], "from": form["From"],
                                 "status": "queued", "direction": "outbound-api", "api_version": "2010-04-01"},
                                status_code=201)

        @app.post("/2010-04-01/Accounts/{account}/Calls/{call}.json")
        async def twilio_update(account: str, call: str, request: Request) -> JSONResponse:
            form = {k: str(v) for k, v in (await request.form()).items()}
            await self._record("twilio", "hangup" if form.get("Status") == "completed" else "transfer", request, form)
            if any(t in form.get("Twiml", "") for t in self.fail_targets):
                return JSONResponse({"code": 21220, "message": "Call is not in-progress", "status": 400},
                                    status_code=400)
            return JSONResponse({"sid": call, "account_sid": account, "api_version": "2010-04-01",
                                 "status": form.get("Status") or "in-progress"})

    def _telnyx(self, app: FastAPI) -> None:
        @app.post("/v2/calls/{call_control_id}/actions/{action}")
        async def telnyx_action(call_control_id: str, action: str, request: Request) -> JSONResponse:
            body = await request.json()
            name = {"send_dtmf": "dtmf"}.get(action, action)
            await self._record("telnyx", name, request, body)
            if action not in ("transfer", "hangup", "send_dtmf"):
                return JSONResponse({"errors": [{"code": "10015", "title": "Bad Request"}]}, status_code=400)
            if body.get("to") in self.fail_targets:
                return JSONResponse({"errors": [{"code": "90018", "title": "Call has already ended"}]},
                                    status_code=422)
            return JSONResponse({"data": {"result": "ok"}})

        @app.post("/v2/texml/Accounts/{account_sid}/Calls")
        async def telnyx_create(account_sid: str, request: Request) -> JSONResponse:
            body = await request.json()
            await self._record("telnyx", "dial", request, body)
            if body.get("To") in self.fail_targets:
                return JSONResponse({"errors": [{"code": "10010", "title": "Invalid destination"}]},
                                    status_code=422)
            self._placed(Dialed("telnyx", "v3:" + secrets.token_urlsafe(16), body["To"], body["From"],
                                body.get("Url"), body.get("Texml"), body.get("AsyncAmdStatusCallback")))
            return JSONResponse({"from": body["From"], "to": body["To"], "status": "queued"})

    def _vonage(self, app: FastAPI) -> None:
        @app.put("/v1/calls/{uuid}")
        async def vonage_update(uuid: str, request: Request) -> Response:
            body = await request.json()
            await self._record("vonage", str(body.get("action")), request, body)
            ncco = (body.get("destination") or {}).get("ncco") or [{}]
            targets = {e.get("number") or e.get("uri") for e in ncco[0].get("endpoint", [])}
            if targets & ({t.removeprefix("+") for t in self.fail_targets} | self.fail_targets):
                return JSONResponse({"type": "https://developer.nexmo.com/api-errors#bad-request",
                                     "title": "Bad Request", "detail": "The call is not active"}, status_code=400)
            return Response(status_code=204)

        @app.put("/v1/calls/{uuid}/dtmf")
        async def vonage_dtmf(uuid: str, request: Request) -> JSONResponse:
            await self._record("vonage", "dtmf", request, await request.json())
            return JSONResponse({"message": "DTMF sent", "uuid": uuid})

        @app.post("/v1/calls")
        async def vonage_create(request: Request) -> JSONResponse:
            body = await request.json()
            await self._record("vonage", "dial", request, body)
            to = "+" + body["to"][0]["number"]
            if to in self.fail_targets:
                return JSONResponse({"type": "https://developer.nexmo.com/api-errors#bad-request",
                                     "title": "Bad Request", "invalid_parameters": [{"name": "to"}]},
                                    status_code=400)
            uuid = secrets.token_hex(16)
            self._placed(Dialed("vonage", uuid, to, "+" + body["from"]["number"], body["answer_url"][0], None,
                                (body.get("event_url") or [None])[0]))
            return JSONResponse({"uuid": uuid, "status": "started", "direction": "outbound",
                                 "conversation_uuid": "CON-" + uuid}, status_code=201)

    def _plivo(self, app: FastAPI) -> None:
        @app.post("/v1/Account/{auth_id}/Call/")
        async def plivo_create(auth_id: str, request: Request) -> JSONResponse:
            body = await request.json()
            await self._record("plivo", "dial", request, body)
            if "+" + body["to"] in self.fail_targets:
                return JSONResponse({"api_id": secrets.token_hex(8), "error": "invalid destination number"},
                                    status_code=400)
            uuid = secrets.token_hex(16)
            self._placed(Dialed("plivo", uuid, "+" + body["to"], "+" + body["from"], body["answer_url"], None,
                                body.get("machine_detection_url")))
            return JSONResponse({"api_id": secrets.token_hex(8), "message": "call fired", "request_uuid": uuid},
                                status_code=201)

        @app.post("/v1/Account/{auth_id}/Call/{uuid}/")
        async def plivo_transfer(auth_id: str, uuid: str, request: Request) -> JSONResponse:
            body = await request.json()
            await self._record("plivo", "transfer", request, body)
            if any(t in str(body.get("aleg_url")) for t in self.fail_targets):
                return JSONResponse({"api_id": secrets.token_hex(8), "error": "call not found"}, status_code=404)
            return JSONResponse({"api_id": secrets.token_hex(8), "message": "call transferred"}, status_code=202)

        @app.delete("/v1/Account/{auth_id}/Call/{uuid}/")
        async def plivo_hangup(auth_id: str, uuid: str, request: Request) -> Response:
            await self._record("plivo", "hangup", request, None)
            return Response(status_code=204)

        @app.post("/v1/Account/{auth_id}/Call/{uuid}/DTMF/")
        async def plivo_dtmf(auth_id: str, uuid: str, request: Request) -> JSONResponse:
            await self._record("plivo", "dtmf", request, await request.json())
            return JSONResponse({"api_id": secrets.token_hex(8), "message": "digits sent"}, status_code=202)


@contextlib.asynccontextmanager
async def serving(fake: FakeCarrierApi) -> AsyncIterator[FakeCarrierApi]:
    """Serve ``fake`` on a free loopback port (``fake.url``) until exit."""
    async with serving_app(fake.app(), lifespan="off") as port:
        fake.url = f"http://127.0.0.1:{port}"
        try:
            yield fake
        finally:
            for task in list(fake.tasks):
                task.cancel()
