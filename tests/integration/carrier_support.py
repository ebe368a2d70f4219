"""A local fake of the carriers' call-control REST APIs (Twilio, Telnyx): records every request and answers as
the vendor documents, so the official SDKs can be pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from services.gateway.server import serving_app


@dataclass
class FakeCarrierApi:
    """The recorded requests (``method``, ``path``, form or JSON body) and the base URL once served."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_targets: set[str] = field(default_factory=set)
    """Transfer targets answered with HTTP 500 (a carrier error)."""
    url: str = ""
    hold: asyncio.Event | None = None
    """Set: each request is recorded, then answered only once the event is set (ordering tests)."""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/2010-04-01/Accounts/{account}/Calls/{call}.json")
        async def twilio_update(account: str, call: str, request: Request) -> JSONResponse:
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.requests.append({"carrier": "twilio", "path": request.url.path, "body": form,
                                  "auth": request.headers.get("authorization")})
            if self.hold is not None:
                await self.hold.wait()
            if any(t in form.get("Twiml", "") for t in self.fail_targets):
                return JSONResponse({"code": 21220, "message": "Call is not in-progress", "status": 400},
                                    status_code=400)
            return JSONResponse({"sid": call, "account_sid": account, "status": "in-progress",
                                 "api_version": "2010-04-01"})

        @app.post("/v2/calls/{call_control_id}/actions/transfer")
        async def telnyx_transfer(call_control_id: str, request: Request) -> JSONResponse:
            body = await request.json()
            self.requests.append({"carrier": "telnyx", "path": request.url.path, "body": body,
                                  "auth": request.headers.get("authorization")})
            if self.hold is not None:
                await self.hold.wait()
            if body.get("to") in self.fail_targets:
                return JSONResponse({"errors": [{"code": "90018", "title": "Call has already ended"}]},
                                    status_code=422)
            return JSONResponse({"data": {"result": "ok"}})

        return app


@contextlib.asynccontextmanager
async def serving(fake: FakeCarrierApi) -> AsyncIterator[FakeCarrierApi]:
    """Serve ``fake`` on a free loopback port (``fake.url``) until exit."""
    async with serving_app(fake.app(), lifespan="off") as port:
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
