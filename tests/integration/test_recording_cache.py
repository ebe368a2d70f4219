"""Recordings are a projection of the archive: the recorder API re-renders ``recording.wav`` from the archived
audio events when the cached file is gone (pod restart onto an empty volume, deleted file, new cache directory)
and answers with the same audio. Real NATS, real SQLite/PostgreSQL, the recorder's own finalizer."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path

import httpx

from services.recorder import queries
from services.recorder.api import create_app
from services.recorder.db import open_database
from services.recorder.service import Recorder
from shared.bus import Bus
from shared.config import load_settings
from switchboard.testing.scripted import publish_call, script


def _frames(data: bytes) -> tuple[int, int, bytes]:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())


async def test_deleted_recording_is_rendered_again_from_the_archive(nats_url: str, database_url: str,
                                                                    tmp_path: Path, unique: str) -> None:
    gateway = await Bus.connect(nats_url, name="test-gateway", source="gateway")
    session = await Bus.connect(nats_url, name="test-session", source="session")
    await gateway.ensure_streams(load_settings(js_max_age=3600))
    engine = await open_database(database_url)
    cache = tmp_path / "pvc" / "recordings"
    recorder = Recorder(gateway, engine, tmp_path / "data", durable_prefix=f"cache{unique}", settle_s=0.2,
                        recordings_dir=cache)
    await recorder.start()
    try:
        call_id = f"CAcache{unique}"
        await publish_call(gateway, session, call_id, speed=20.0, steps=script(call_id))
        async with asyncio.timeout(60), recorder.finalizer.done:
            await recorder.finalizer.done.wait_for(lambda: call_id in recorder.finalizer.finalized)
        cached = cache / f"{call_id}.wav"
        assert cached.is_file(), "the finalizer writes the recording into the configured cache directory"

        app = create_app(engine, api_token=None, bus=gateway, recordings_dir=cache)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://recorder") as client:
            first = await client.get(f"/calls/{call_id}/recording.wav")
            assert first.status_code == 200 and first.headers["content-type"] == "audio/wav"
            channels, rate, audio = _frames(first.content)
            assert (channels, rate) == (2, 8000) and any(audio), "a stereo recording with sound in it"

            cached.unlink()
            again = await client.get(f"/calls/{call_id}/recording.wav")
            assert again.status_code == 200
            assert _frames(again.content) == (channels, rate, audio)
            assert cached.is_file(), "the re-rendered recording is cached again"

            # a fresh volume (new cache directory, the stored path gone with the old one) answers the same
            fresh = tmp_path / "new-pvc"
            moved = create_app(engine, api_token=None, bus=gateway, recordings_dir=fresh)
            cached.unlink()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=moved),
                                         base_url="http://recorder") as other:
                third = await other.get(f"/calls/{call_id}/recording.wav")
            assert third.status_code == 200 and _frames(third.content) == (channels, rate, audio)
            assert (fresh / f"{call_id}.wav").is_file()

            assert (await client.get("/calls/CAnosuchcall/recording.wav")).status_code == 404
        assert (await queries.get_call(engine, call_id) or {}).get("recording_path") == str(cached)
    finally:
        await recorder.stop()
        await engine.dispose()
        await gateway.close()
        await session.close()
