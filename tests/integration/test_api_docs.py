"""API reference pages and OpenAPI documents that tell the truth (:mod:`shared.apidocs`).

``/docs`` (Swagger UI) and ``/redoc`` load only this server's own assets, each of which answers 200, so they work
offline; ``/openapi.json`` declares a response model for every JSON route, the media types of the non-JSON
answers, and — with an API token — the Bearer scheme (plus ``?access_token=`` where a browser needs it).
Real apps over ASGI on a real (SQLite) database and a real NATS connection (the gateway's browser-token store).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.analytics.api import create_app as analytics_app
from services.analytics.db import open_database as open_analytics
from services.gateway.app import Gateway
from services.gateway.app import create_app as gateway_app
from services.recorder.api import create_app as recorder_app
from services.recorder.db import open_database as open_recorder
from shared.apidocs import ASSETS_PATH
from shared.bus import Bus
from shared.config import load_settings

TOKEN = "docs-s3cret"


@pytest.fixture
async def apps(tmp_path: Path, nats_url: str) -> AsyncIterator[dict[str, FastAPI]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"
    recorder_engine = await open_recorder(url)
    analytics_engine = await open_analytics(url)
    bus = await Bus.connect(nats_url, name="docs-test", source="gateway")
    yield {"recorder": recorder_app(recorder_engine, api_token=None),
           "recorder+token": recorder_app(recorder_engine, api_token=TOKEN),
           "analytics": analytics_app(analytics_engine, api_token=None),
           "analytics+token": analytics_app(analytics_engine, api_token=TOKEN),
           "gateway": gateway_app(Gateway(bus, load_settings(nats_url=nats_url))),
           "gateway+token": gateway_app(Gateway(bus, load_settings(nats_url=nats_url, api_token=TOKEN)))}
    await bus.close()
    await recorder_engine.dispose()
    await analytics_engine.dispose()


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc",
                             headers={"Authorization": f"Bearer {TOKEN}"})


def _urls(page: str) -> list[str]:
    """Every URL a docs page makes the browser load: src/href attributes and the spec URL its script fetches."""
    return (re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: ?'([^']+)'", page)
            + re.findall(r'spec-url="([^"]+)"', page))


@pytest.mark.parametrize("name", ["recorder", "recorder+token", "analytics", "analytics+token", "gateway",
                                  "gateway+token"])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_local_assets(apps: dict[str, FastAPI], name: str, page: str) -> None:
    async with _client(apps[name]) as client:
        html = await client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        urls = _urls(html.text)
        assert any(u.startswith(ASSETS_PATH) and u.endswith(".js") for u in urls), urls
        assert "/openapi.json" in urls, urls
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
            assert (await client.get(url)).status_code == 200, url
        assert "fonts.googleapis" not in html.text and "cdn." not in html.text


async def test_recorder_docs_need_the_token_when_set(apps: dict[str, FastAPI]) -> None:
    app = apps["recorder+token"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as anonymous:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await anonymous.get(path)).status_code == 401, path
        assert (await anonymous.get(f"{ASSETS_PATH}/swagger-ui.css")).status_code == 200  # the viewer, no data


async def test_gateway_docs_are_public_like_its_carrier_routes(apps: dict[str, FastAPI]) -> None:
    """The gateway's routes face carriers and browsers (Twilio signatures, browser tokens), so its reference is
    public even with an API token; the document then names the Bearer scheme of ``POST /browser/token``."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps["gateway+token"]),
                                 base_url="http://svc") as anonymous:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await anonymous.get(path)).status_code == 200, path
        doc = (await anonymous.get("/openapi.json")).json()
        assert (await anonymous.post("/browser/token")).status_code == 401  # the route itself stays guarded
    ops = _operations(doc)
    assert ops["POST /browser/token"]["security"] == [{"bearerAuth": []}, {"browserSession": []}]
    assert ops["POST /twilio/voice"]["security"] == []
    assert ops["POST /twilio/amd"]["security"] == [] and ops["POST /plivo/transfer"]["security"] == []
    assert ops["POST /calls/outbound"]["security"] == [{"bearerAuth": []}]
    assert set(ops["POST /twilio/voice"]["responses"]["200"]["content"]) == {"application/xml"}
    assert not any(path in doc["paths"] for path in ("/docs", "/redoc", "/openapi.json"))


def _operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{method.upper()} {path}": op for path, ops in doc["paths"].items() for method, op in ops.items()}


@pytest.mark.parametrize("name", ["recorder", "analytics", "gateway"])
async def test_every_json_route_has_a_response_model(apps: dict[str, FastAPI], name: str) -> None:
    async with _client(apps[name]) as client:
        doc = (await client.get("/openapi.json")).json()
    for label, op in _operations(doc).items():
        success = next(v for k, v in sorted(op["responses"].items()) if k.startswith("2"))  # 200, 201 or 204
        content = success.get("content", {})
        if "application/json" in content:
            schema = content["application/json"]["schema"]
            assert "$ref" in schema or "$ref" in schema.get("items", {}), f"{label} documents no response model"
    assert "securitySchemes" not in doc.get("components", {})  # no token: nothing to present


async def test_recorder_declares_media_types_and_security(apps: dict[str, FastAPI]) -> None:
    async with _client(apps["recorder+token"]) as client:
        doc = (await client.get("/openapi.json")).json()
    ops = _operations(doc)

    def media(label: str) -> set[str]:
        return set(ops[label]["responses"]["200"]["content"])

    assert media("GET /calls/{call_id}/recording.wav") == {"audio/wav"}
    assert media("GET /calls/{call_id}/events") == {"application/x-ndjson"}
    assert media("GET /calls/{call_id}/live/events") == {"text/event-stream"}
    assert media("GET /calls/{call_id}/live") == {"text/html"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["accessToken"] == {"type": "apiKey", "in": "query", "name": "access_token",
                                      "description": "the API token, for what a browser opens without a header"}
    assert ops["GET /calls"]["security"] == [{"bearerAuth": []}]
    assert ops["GET /calls/{call_id}/live/events"]["security"] == [{"bearerAuth": []}, {"accessToken": []}]
    assert ops["GET /ui/"]["security"] == [{"bearerAuth": []}, {"accessToken": []}]
    assert all("401" in op["responses"] for op in ops.values())
