"""The console and ``/phone`` in a real headless Chromium (Debian's ``chromium``), driven by Playwright for
Python pointed at the system browser (Playwright never downloads one here).

Without Chromium (or Playwright) the tests skip with the reason; under ``CI=true`` they fail instead
(``.ci/run`` installs ``chromium`` when it is missing). Screenshots of every page are saved under
``.switchboard-artifacts/browser/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared.tts import synthesize
from switchboard.caller import run_scenario
from switchboard.scenario import load_scenario
from tests.e2e.conftest import ROOT, System
from tests.e2e.test_analytics import with_caller
from tests.e2e.test_scenarios import archived, placed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = ROOT / ".switchboard-artifacts" / "browser"


def _unavailable() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"Chromium not installed ({CHROMIUM}; apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
async def playwright_() -> AsyncIterator[Any]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
async def browser(playwright_: Any) -> AsyncIterator[Any]:
    b = await playwright_.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    yield b
    await b.close()


async def shot(page: Any, name: str, *, full: bool = True) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


async def test_calls_list_shows_placed_calls(system: System, browser: Any) -> None:
    result, _ = await placed(system, ROOT / "scenarios" / "book-appointment.yaml")
    page = await browser.new_page()
    await page.goto(f"{system.recorder_url}/ui/")
    row = page.locator(f'tr[data-call-id="{result.call_id}"]')
    await row.wait_for()
    assert "ended" in await row.inner_text()
    await shot(page, "calls-list")
    await row.locator("a").click()
    await page.wait_for_url(f"**/ui/calls/{result.call_id}")
    await page.close()


async def test_call_page_plays_the_recording_and_shows_the_transcript(system: System, browser: Any) -> None:
    result, _ = await placed(system, ROOT / "scenarios" / "book-appointment.yaml")
    page = await browser.new_page()
    await page.goto(f"{system.recorder_url}/ui/calls/{result.call_id}")
    transcript = await page.locator("#transcript").inner_text()
    assert "booked" in transcript.lower() and "book_appointment(" in transcript
    await page.evaluate("document.getElementById('player').play()")
    await page.wait_for_function("document.getElementById('player').currentTime > 1.0", timeout=30_000)
    duration = await page.evaluate("document.getElementById('player').duration")
    assert duration > 2.0
    await page.wait_for_selector("#transcript .turn.playing", timeout=30_000)  # the transcript follows
    await page.evaluate("document.getElementById('player').pause()")
    await page.evaluate("window.scrollTo(0, 0)")
    await shot(page, "call-page", full=False)
    await page.goto(f"{system.recorder_url}/ui/kpis")
    assert await page.locator("svg.chart").count() >= 6
    await shot(page, "kpis")
    await page.close()


async def test_live_view_updates_during_a_call(system: System, browser: Any) -> None:
    scenario = with_caller(load_scenario(ROOT / "scenarios" / "unknown-request.yaml"), "+15558880001")
    call = asyncio.create_task(run_scenario(scenario, gateway_url=system.gateway_url, nats_url=system.nats_url,
                                            speed=1.0))
    async with httpx.AsyncClient(base_url=system.recorder_url, timeout=10) as client, asyncio.timeout(60):
        while True:
            live = [c for c in (await client.get("/calls", params={"limit": 50})).json()
                    if c["from_number"] == "+15558880001" and c["status"] != "ended"]
            if live:
                break
            await asyncio.sleep(0.2)
    call_id = live[0]["call_id"]
    page = await browser.new_page()
    await page.goto(f"{system.recorder_url}/ui/calls/{call_id}")
    await page.wait_for_selector("#live-status:text('live')", timeout=30_000)
    first = await page.locator("#live-log .turn").count()
    await page.wait_for_function(f"document.querySelectorAll('#live-log .turn').length > {first}",
                                 timeout=60_000)  # new turns arrive while the page is open
    await shot(page, "live-view")
    result = await call
    assert result.ok, result.failures
    items = [t for t in await page.locator("#live-log .turn .text").all_inner_texts() if t.strip()]
    assert items and all(a != b for a, b in itertools.pairwise(items))  # no turn shown twice
    await archived(system, call_id)
    await page.goto(f"{system.recorder_url}/ui/calls/{call_id}")
    assert "end_call(" in await page.locator("#transcript").inner_text()  # tool calls kept after the end
    await page.close()


def caller_wav(path: Path) -> Path:
    """What the fake microphone says (Chromium loops the file): a request, then silence."""
    samples, rate = synthesize("Hi, I would like to book an appointment for tomorrow at ten")
    audio = np.concatenate([np.zeros(rate, np.int16), samples, np.zeros(4 * rate, np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())
    return path


async def test_phone_completes_a_call_with_the_fake_microphone(system: System, playwright_: Any,
                                                               tmp_path: Path) -> None:
    wav = caller_wav(tmp_path / "caller.wav")
    browser = await playwright_.chromium.launch(executable_path=CHROMIUM, args=[
        *FLAGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}"])
    try:
        context = await browser.new_context()
        await context.grant_permissions(["microphone"], origin=system.gateway_url)
        page = await context.new_page()
        await page.goto(f"{system.gateway_url}/phone")
        await page.click("#call")
        await page.wait_for_selector("body[data-call-id]", timeout=30_000)
        call_id = await page.get_attribute("body", "data-call-id")
        await page.wait_for_selector("#transcript .assistant", timeout=60_000)  # the greeting, live
        try:
            await page.wait_for_selector("#transcript .user", timeout=90_000)  # the caller was understood
        finally:
            await shot(page, "phone")
        log = await page.locator("#log").inner_text()
        assert "microphone at" in log
        link = await page.get_attribute("#callPage", "href")
        assert link and link.endswith(f"/ui/calls/{call_id}")
        await page.click("#hangup")
        await page.wait_for_selector("body[data-ended]", timeout=30_000)
        assert call_id
        record = await archived(system, call_id)
        assert record["end_reason"] == "caller_hangup" and record["carrier"] == "browser"
        await page.goto(link)
        assert call_id in await page.locator("h1").inner_text()
        await shot(page, "phone-call-page")
    finally:
        await browser.close()
