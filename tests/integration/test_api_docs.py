"""API reference pages and OpenAPI documents that tell the truth (:mod:`shared.apidocs`).

``/docs`` (Swagger UI) and ``/redoc`` load only this server's own assets, each of which answers 200, so they work
offline; ``/openapi.json`` declares a response model for every JSON route, the media types of the non-JSON
answers, and — with an API token — the Bearer scheme (plus ``?access_token=`` where a browser needs it).
Real apps over ASGI on a real (SQLite) database.
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
from services.recorder.api import create_app as recorder_app
from services.recorder.db import open_database as open_recorder
from shared.apidocs import ASSETS_PATH

TOKEN = "docs-s3cret"


@pytest.fixture
async def apps(tmp_path: Path) -> AsyncIterator[dict[str, FastAPI]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"
    recorder_engine = await open_recorder(url)
    analytics_engine = await open_analytics(url)
    yield {"recorder": recorder_app(recorder_engine, api_token=None),
           "recorder+token": recorder_app(recorder_engine, api_token=TOKEN),
           "analytics": analytics_app(analytics_engine, api_token=None),
           "analytics+token": analytics_app(analytics_engine, api_token=TOKEN)}
    await recorder_engine.dispose()
    await analytics_engine.dispose()


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc",
                             headers={"Authorization": f"Bearer {TOKEN}"})


def _urls(page: str) -> list[str]:
    """Every URL a docs page makes the browser load: src/href attributes and the spec URL its script fetches."""
    return (re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: ?'([^']+)'", page)
            + re.findall(r'spec-url="([^"]+)"', page))


@pytest.mark.parametrize("name", ["recorder", "recorder+token", "analytics", "analytics+token"])
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


def _operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{method.upper()} {path}": op for path, ops in doc["paths"].items() for method, op in ops.items()}


@pytest.mark.parametrize("name", ["recorder", "analytics"])
async def test_every_json_route_has_a_response_model(apps: dict[str, FastAPI], name: str) -> None:
    async with _client(apps[name]) as client:
        doc = (await client.get("/openapi.json")).json()
    for label, op in _operations(doc).items():
        content = op["responses"]["200"].get("content", {})
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
