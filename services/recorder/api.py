"""The recorder's REST API and pages (FastAPI; OpenAPI at ``/openapi.json``, Swagger UI at ``/docs`` and ReDoc at
``/redoc`` from local assets: :mod:`shared.apidocs`; response models: :mod:`services.recorder.schemas`).

Routes: ``GET /calls`` (recent calls), ``/calls/{id}``, ``/calls/{id}/events`` (NDJSON in time order,
``?type=`` glob such as ``response.*``, ``?stream=RT|CALLS``), ``/calls/{id}/transcript``,
``/calls/{id}/tool_calls``, ``/calls/{id}/recording.wav``, ``/calls/{id}/trace`` (spans + waterfall),
``/calls/{id}/audit`` (hash-chain verification), ``DELETE /calls/{id}`` (erasure: destroys the call's data
key, services/recorder/erasure.py), ``/audit/streams`` (positions, stream-level gaps, call ids),
``/calls/{id}/live`` (HTML) and ``/calls/{id}/live/events`` (SSE), the web console under ``/ui/`` (``/``
redirects there; :mod:`services.recorder.ui`), plus ``/healthz``, ``/readyz``, ``/metrics``
(``shared.http.add_ops_routes``).

With ``SWITCHBOARD_API_TOKEN`` set every route but the ops routes — ``/docs`` and ``/openapi.json`` included —
requires ``Authorization: Bearer <token>``; only what a browser opens without a header — the console under
``/ui/``, the live page and its event stream, and ``recording.wav`` for the console's player — also accepts
``?access_token=<token>`` (a token in a URL ends up in logs and history: nowhere else). 401 otherwise.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import nats.errors
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from services.recorder import queries
from services.recorder.crypto import KeyUnavailable
from services.recorder.erasure import Eraser
from services.recorder.live import live_stream
from services.recorder.projections import project
from services.recorder.recording import cached_wav
from services.recorder.schemas import AuditReport, AuditStreams, Call, CallChain, CallTrace, Erasure, Transcript
from services.recorder.ui.routes import add_console
from services.recorder.vault import Vault, configured_vault
from services.recorder.waterfall import waterfall
from shared import subjects
from shared.apidocs import EventStreamResponse, NdjsonResponse, WavResponse, add_api_docs, binary, declare_bearer
from shared.bus import Bus
from shared.config import get_settings
from shared.errors import PublishFailedError
from shared.health import Readiness
from shared.http import TELEMETRY, add_ops_routes

__all__ = ["create_app"]

_STATIC = Path(__file__).parent / "static"


def _valid_call_id(call_id: str) -> str:
    try:
        return subjects.validate_call_id(call_id)
    except ValueError:
        raise HTTPException(status_code=400, detail="invalid call id: expected [A-Za-z0-9_-]{1,64}") from None


def _check(request: Request, *, query_ok: bool) -> None:
    api_token: str | None = request.app.state.api_token
    if not api_token:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not given and query_ok:
        given = request.query_params.get("access_token", "")
    if not given or not hmac.compare_digest(given.encode(), api_token.encode()):
        raise HTTPException(status_code=401, detail="missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


async def _authorize(request: Request) -> None:
    """Require ``Authorization: Bearer <token>`` when the app has a token (401 otherwise)."""
    _check(request, query_ok=False)


async def _authorize_live(request: Request) -> None:
    """Like :func:`_authorize`, also accepting ``?access_token=``: only what a browser opens without a header (the
    console under ``/ui/``, the live page and its SSE, the recording its audio player plays)."""
    _check(request, query_ok=True)


Auth = Annotated[None, Depends(_authorize)]
_QUERY_TOKEN_PATHS = frozenset({"/calls/{call_id}/live", "/calls/{call_id}/live/events",
                                "/calls/{call_id}/recording.wav"})
"""The documented routes outside the console (``/ui/``) that also take ``?access_token=`` (``LiveAuth``)."""
LiveAuth = Annotated[None, Depends(_authorize_live)]
CallId = Annotated[str, Depends(_valid_call_id)]


def create_app(engine: AsyncEngine, *, api_token: str | None, bus: Bus | None = None,
               ready: Readiness | Callable[[], bool] = lambda: True,
               recordings_dir: Path | None = None, vault: Vault | None = None,
               eraser: Eraser | None = None) -> FastAPI:
    """Build the API over ``engine``; ``bus`` feeds the live page (None: archive only); ``ready`` answers
    ``/readyz`` (the service passes its started :class:`~shared.health.Readiness`); ``recordings_dir`` caches
    re-rendered recordings (None: ``SWITCHBOARD_RECORDINGS_DIR``, default ``<data dir>/recordings``).

    ``vault`` opens the archived caller content (None: the eraser's, else ``SWITCHBOARD_ARCHIVE_KEY`` /
    ``<data dir>/auth/archive_key``); ``eraser`` serves ``DELETE /calls/{id}`` (None: one over ``bus`` without
    the archive writer's lock — the service passes the running recorder's; without a bus erasure answers 503).
    A call whose key cannot be had answers 500 naming why (wrong ``SWITCHBOARD_ARCHIVE_KEY``, key missing)."""
    app = FastAPI(title="Switchboard recorder", version="1",
                  description="The call archive: calls, events, transcripts, recordings, traces, audit.",
                  docs_url=None, redoc_url=None, openapi_url=None, telemetry=TELEMETRY)
    app.state.api_token = api_token
    add_api_docs(app, dependencies=[Depends(_authorize)])  # /docs, /redoc, /openapi.json: local assets
    declare_bearer(app, enabled=bool(api_token),
                   query_token=lambda path: path in _QUERY_TOKEN_PATHS or path.startswith("/ui/"))
    settings = get_settings()
    if vault is None:
        vault = eraser.vault if eraser is not None else configured_vault()
    cache_dir = recordings_dir or settings.effective_recordings_dir
    if eraser is None and bus is not None:
        eraser = Eraser(engine, vault, bus, cache_dir)

    @app.exception_handler(KeyUnavailable)
    async def key_unavailable(_: Request, exc: KeyUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"the call's content cannot be decrypted: {exc}"}, status_code=500)

    add_ops_routes(app, ready)
    live_html = (_STATIC / "live.html").read_text(encoding="utf-8").replace(  # the console's live view script
        "/*LIVE_JS*/", (_STATIC.parent / "ui" / "live.js").read_text(encoding="utf-8"))

    def gone(call: dict[str, Any]) -> None:
        if call.get("erased_ns") is not None:
            raise HTTPException(status_code=410, detail={
                "erased": {"erased_ns": call["erased_ns"], "erased_by": call.get("erased_by"),
                           "reason": call.get("erase_reason")}})

    async def existing(call_id: str) -> dict[str, Any]:
        call = await queries.get_call(engine, call_id)
        if call is None:
            raise HTTPException(status_code=404, detail=f"no call {call_id}")
        return call

    @app.get("/calls", summary="Recent calls, newest first", response_model=list[Call])
    async def list_calls(_: Auth, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JSONResponse:
        return JSONResponse(await queries.list_calls(engine, limit=limit))

    @app.get("/calls/{call_id}", summary="One call: metadata, usage, cost estimate, event counts",
             response_model=Call)
    async def get_call(_: Auth, call_id: CallId) -> JSONResponse:
        return JSONResponse(await existing(call_id))

    @app.get("/calls/{call_id}/events", summary="The call's archived events as NDJSON, in time order",
             response_class=NdjsonResponse,
             responses=binary(NdjsonResponse.media_type, "one archived event per line (JSON object)"))
    async def events(_: Auth, call_id: CallId, type: str | None = None, stream: str | None = None,
                     body: bool = True) -> NdjsonResponse:
        await existing(call_id)
        await vault.reader_key(engine, call_id)  # a key that cannot be had fails here, before streaming

        async def lines() -> AsyncIterator[bytes]:
            async for ev in queries.iter_call_events(engine, call_id, vault=vault):
                if stream and ev.stream != stream:
                    continue
                if type and not fnmatch.fnmatchcase(ev.type, type):
                    continue
                yield json.dumps(ev.to_dict(include_body=body), separators=(",", ":")).encode() + b"\n"

        return NdjsonResponse(lines())

    @app.get("/calls/{call_id}/transcript", summary="Transcript turns (role, text, start/end ms)",
             response_model=Transcript)
    async def transcript(_: Auth, call_id: CallId) -> JSONResponse:
        call = await existing(call_id)
        gone(call)
        if call.get("projected_ns"):
            stored = await queries.stored_projection(engine, call_id)
            return JSONResponse({"call_id": call_id, "final": True, "turns": stored["turns"],
                                 "tool_calls": stored["tool_calls"], "barge_ins": stored["barge_ins"]})
        evs = await queries.call_events(engine, call_id, vault=vault)
        projection = await asyncio.to_thread(project, evs)
        data = projection.to_dict()
        return JSONResponse({"call_id": call_id, "final": False, "turns": data["turns"],
                             "tool_calls": data["tool_calls"], "barge_ins": data["barge_ins"]})

    @app.get("/calls/{call_id}/recording.wav", summary="Stereo WAV: caller left, agent right",
             response_class=WavResponse, responses=binary(WavResponse.media_type, "16-bit stereo WAV"))
    async def recording(_: LiveAuth, call_id: CallId) -> WavResponse:  # the console's <audio> player
        # A projection of the archive: the cached file when it exists, else rendered again from the archived
        # audio events into the recordings directory (services.recorder.recording.cached_wav). Only calls the
        # finalizer has projected, so a cache is never written from a call whose events are still arriving.
        call = await existing(call_id)
        gone(call)
        if not call.get("projected_ns"):
            raise HTTPException(status_code=404, detail="no recording (the call has not ended)")
        stored = call.get("recording_path")
        path: Path | None = Path(stored) if stored else None
        if path is None or not await asyncio.to_thread(path.is_file):
            path = await cached_wav(cache_dir / f"{call_id}.wav",
                                    lambda: queries.call_events(engine, call_id, vault=vault))
            if path is not None and (await existing(call_id)).get("erased_ns") is not None:
                await asyncio.to_thread(path.unlink, missing_ok=True)  # erased while it was being rendered
                gone(await existing(call_id))
        if path is None:
            raise HTTPException(status_code=404, detail="no recording (the call had no audio)")
        return WavResponse(path, media_type=WavResponse.media_type, filename=f"{call_id}.wav")

    @app.get("/calls/{call_id}/trace", summary="The call's spans and a waterfall", response_model=CallTrace)
    async def trace(_: Auth, call_id: CallId) -> JSONResponse:
        await existing(call_id)
        spans = await queries.call_spans(engine, call_id)
        return JSONResponse({"call_id": call_id, "trace_ids": sorted({s["trace_id"] for s in spans}),
                             "spans": spans, "waterfall": waterfall(spans)})

    @app.get("/calls/{call_id}/audit", summary="Recompute the call's hash chains", response_model=AuditReport)
    async def audit(_: Auth, call_id: CallId) -> JSONResponse:
        await existing(call_id)
        report = await queries.verify_call(engine, call_id, vault=vault)
        return JSONResponse(report.to_dict())

    @app.delete("/calls/{call_id}", summary="Erase the call: destroy its data key, transcripts and recording",
                response_model=Erasure)
    async def erase(_: Auth, request: Request, call_id: CallId) -> JSONResponse:
        # Crypto-shredding (services/recorder/erasure.py); the erasure is archived as call.<id>.erased.
        await existing(call_id)
        if eraser is None:
            raise HTTPException(status_code=503, detail="erasure needs the bus (the audited call.<id>.erased)")
        actor = request.headers.get("x-switchboard-actor", "").strip()[:96]
        client = request.client.host if request.client else "unknown"
        try:
            done = await eraser.erase(call_id, by=f"api:{actor or client}")
        except (PublishFailedError, nats.errors.Error, TimeoutError) as exc:
            raise HTTPException(status_code=503, detail=f"call.{call_id}.erased could not be published, "
                                                        f"nothing was erased: {exc!r}") from None
        return JSONResponse(done)

    @app.get("/calls/{call_id}/chain", summary="The call's chain records (stream, index, hash) for checkpoints",
             response_model=CallChain)
    async def chain(_: Auth, call_id: CallId) -> JSONResponse:
        call = await existing(call_id)
        return JSONResponse({"call_id": call_id, "ended_ns": call.get("ended_ns"),
                             "rows": await queries.chain_rows(engine, call_id)})

    @app.get("/audit/streams", summary="Archive-wide audit facts: committed positions and stream-level gaps",
             response_model=AuditStreams)
    async def audit_streams(_: Auth) -> JSONResponse:
        return JSONResponse({"positions": await queries.positions(engine), "gaps": await queries.stream_gaps(engine),
                             "calls": await queries.call_ids(engine)})

    @app.get("/calls/{call_id}/live", response_class=HTMLResponse, summary="Live transcript page")
    async def live_page(_: LiveAuth, call_id: CallId) -> HTMLResponse:
        return HTMLResponse(live_html)

    @app.get("/calls/{call_id}/live/events", summary="Live transcript as Server-Sent Events",
             response_class=EventStreamResponse,
             responses=binary(EventStreamResponse.media_type,
                              "events turn, delta, tool, tool_result, speech_started, ended (JSON data)"))
    async def live_events(_: LiveAuth, call_id: CallId) -> EventStreamResponse:
        call = await queries.get_call(engine, call_id)
        if call is not None:
            gone(call)
        return EventStreamResponse(live_stream(bus, engine, call_id, vault=vault),
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        token = request.query_params.get("access_token")
        return RedirectResponse("/ui/" + (f"?access_token={quote(token, safe='')}" if token else ""))

    add_console(app, engine, _authorize_live, vault=vault)  # browser pages: a link cannot carry a header
    return app
