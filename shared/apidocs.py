"""API reference pages from local assets, and an OpenAPI document that states how to authenticate.

FastAPI's own ``/docs`` and ``/redoc`` pages load Swagger UI and ReDoc from a CDN, so offline (a laptop demo, a
cluster without egress) they are blank. :func:`add_api_docs` serves both pages with the JavaScript and CSS that
the ``fastapi-offline`` package ships (its ``static`` directory: ``swagger-ui-bundle.js``, ``swagger-ui.css``,
``redoc.standalone.js``, ``favicon.png``) under :data:`ASSETS_PATH`, so every URL the pages load is this server's.
Swagger UI's external validator badge is off (``validatorUrl: null``) and ReDoc loads no web fonts.

:func:`declare_bearer` adds the security schemes to the document when the service requires a token: an HTTP
``bearer`` scheme (https://swagger.io/docs/specification/v3_0/authentication/bearer-authentication/) required by
every documented operation, and — for the routes a browser opens without a header — the ``access_token`` query
parameter as an alternative ``apiKey`` scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request, params
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "BEARER_SCHEME", "QUERY_TOKEN_SCHEME", "EventStreamResponse", "NdjsonResponse",
           "WavResponse", "XmlResponse", "add_api_docs", "binary", "declare_bearer"]

ASSETS_PATH = "/api-docs-assets"
"""Where the Swagger UI and ReDoc assets are served (public: they are the viewers' code, not API data)."""
BEARER_SCHEME = "bearerAuth"
QUERY_TOKEN_SCHEME = "accessToken"

_ASSETS_DIR = files("fastapi_offline").joinpath("static")


class NdjsonResponse(StreamingResponse):
    """A stream of JSON lines (https://github.com/ndjson/ndjson-spec), declared as ``application/x-ndjson``."""

    media_type = "application/x-ndjson"


class EventStreamResponse(StreamingResponse):
    """Server-Sent Events (https://html.spec.whatwg.org/multipage/server-sent-events.html), ``text/event-stream``."""

    media_type = "text/event-stream"


class WavResponse(FileResponse):
    """A WAV file, ``audio/wav``."""

    media_type = "audio/wav"


class XmlResponse(Response):
    """An XML document (TwiML), ``application/xml``."""

    media_type = "application/xml"


def binary(media_type: str, description: str, schema: dict[str, Any] | None = None) -> dict[int | str, Any]:
    """A ``responses=`` entry declaring that the 200 answer is ``media_type`` with ``schema`` (default: a
    string; binary for ``audio/*``)."""
    if schema is None:
        schema = {"type": "string", "format": "binary"} if media_type.startswith("audio/") else {"type": "string"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


def add_api_docs(app: FastAPI, *, dependencies: Sequence[params.Depends] = ()) -> None:
    """Serve ``/openapi.json``, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) for ``app``, each behind
    ``dependencies`` (e.g. the service's bearer check), with the viewers' assets under :data:`ASSETS_PATH`.

    ``app`` must be created with ``docs_url=None, redoc_url=None, openapi_url=None`` (FastAPI's own routes would
    load the CDN and skip ``dependencies``).

    Raises:
        ValueError: ``app`` still has FastAPI's own docs or OpenAPI route.
    """
    if app.docs_url or app.redoc_url or app.openapi_url:
        raise ValueError("create the app with docs_url=None, redoc_url=None, openapi_url=None")
    app.mount(ASSETS_PATH, StaticFiles(directory=str(_ASSETS_DIR)), name="api-docs-assets")
    deps = list(dependencies)

    @app.get("/openapi.json", include_in_schema=False, dependencies=deps)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=deps)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title} — API",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False, dependencies=deps)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title} — API",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False)


def declare_bearer(app: FastAPI, *, enabled: bool, query_token: Callable[[str], bool] = lambda _: False,
                   extra_schemes: dict[str, dict[str, Any]] | None = None,
                   overrides: dict[str, Sequence[str]] | None = None) -> None:
    """When ``enabled`` (the service has an API token), declare in ``app``'s OpenAPI document that every
    documented operation requires ``Authorization: Bearer <token>``.

    ``query_token(path)``: whether a path (as in the document, e.g. ``/calls/{call_id}/live``) also accepts
    ``?access_token=``. ``extra_schemes`` adds named security schemes, and ``overrides`` maps a path to exactly
    the schemes (by name, any one of which suffices) it accepts instead (e.g. bearer or a session cookie).
    Disabled: the document is unchanged (no scheme, since none is required).
    """
    if not enabled:
        return
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME] = {"type": "http", "scheme": "bearer",
                                  "description": "the service's API token (SWITCHBOARD_API_TOKEN)"}
        paths = schema.get("paths", {})
        if any(query_token(path) for path in paths):
            schemes[QUERY_TOKEN_SCHEME] = {"type": "apiKey", "in": "query", "name": "access_token",
                                           "description": "the API token, for what a browser opens without a header"}
        schemes.update(extra_schemes or {})
        for path, operations in paths.items():
            accepted: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}]
            if query_token(path):
                accepted.append({QUERY_TOKEN_SCHEME: []})
            if path in (overrides or {}):
                accepted = [{name: []} for name in (overrides or {})[path]]
            for operation in operations.values():
                operation["security"] = accepted  # [] : this operation needs none of them
                if accepted:
                    operation.setdefault("responses", {}).setdefault(
                        "401", {"description": "missing or wrong credentials"})
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the document
