"""A bare single-process Twilio Media Streams ↔ Realtime bridge: the baseline of ``bench/pipeline.py``.

What most teams start from: one FastAPI app, one WebSocket to the model per call, no bus, no persistence, no
tracing. Per call (``WS /media``):

- Twilio ``start`` → open ``<model_url>`` (Realtime GA over WebSocket, ``websockets`` client) and send
  ``session.update`` with ``audio/pcmu`` in and out (no resampling, as the phone path of Switchboard);
- Twilio ``media`` → ``input_audio_buffer.append`` with the payload as it came (base64 μ-law);
- model ``response.output_audio.delta`` → Twilio ``media`` with the delta as it came, then a ``mark``;
- model ``input_audio_buffer.speech_started`` → Twilio ``clear`` (barge-in);
- Twilio ``stop`` or a disconnect → close the model socket.

Protocols: https://www.twilio.com/docs/voice/media-streams/websocket-messages and the Realtime GA events
(https://platform.openai.com/docs/api-reference/realtime).
Run: ``python bench/_bare_bridge.py --port P --model-url ws://…/v1/realtime?model=…``;
``GET /readyz`` answers 200 once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any

import uvicorn
import websockets
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse

__all__ = ["build_app", "main"]


def _session_update() -> str:
    fmt = {"type": "audio/pcmu"}
    return json.dumps({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["audio"],
        "audio": {"input": {"format": fmt}, "output": {"format": fmt, "voice": "marin"}}}})


def build_app(model_url: str) -> FastAPI:
    """The bridge app: ``WS /media`` (Twilio Media Streams) and ``GET /readyz``."""
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.websocket("/media")
    async def media(twilio: WebSocket) -> None:
        await twilio.accept()
        stream_sid: str | None = None
        model: Any = None
        pump: asyncio.Task[None] | None = None

        async def from_model() -> None:
            """Model events → Twilio messages."""
            n = 0
            async for raw in model:
                event = json.loads(raw)
                kind = event.get("type")
                if kind == "response.output_audio.delta":
                    await twilio.send_text(json.dumps({"event": "media", "streamSid": stream_sid,
                                                       "media": {"payload": event["delta"]}}))
                    n += 1
                    await twilio.send_text(json.dumps({"event": "mark", "streamSid": stream_sid,
                                                       "mark": {"name": f"{event.get('item_id')}:{n}"}}))
                elif kind == "input_audio_buffer.speech_started":
                    await twilio.send_text(json.dumps({"event": "clear", "streamSid": stream_sid}))

        try:
            while True:
                msg = json.loads(await twilio.receive_text())
                kind = msg.get("event")
                if kind == "media" and model is not None:
                    await model.send(json.dumps({"type": "input_audio_buffer.append",
                                                 "audio": msg["media"]["payload"]}))
                elif kind == "start":
                    stream_sid = msg["start"]["streamSid"]
                    model = await websockets.connect(model_url, compression=None, max_size=2**24,
                                                     additional_headers={"Authorization": "Bearer bench"})
                    await model.send(_session_update())
                    pump = asyncio.create_task(from_model())
                elif kind == "stop":
                    break
        except (WebSocketDisconnect, websockets.ConnectionClosed):
            pass
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            if model is not None:
                await model.close()
            with contextlib.suppress(Exception):
                await twilio.close()

    return app


def main() -> None:
    """Parse ``--port`` and ``--model-url`` and serve (uvicorn, loopback, no access log)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-url", required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.model_url), host="127.0.0.1", port=args.port, access_log=False,
                log_level="warning", ws_per_message_deflate=False)


if __name__ == "__main__":
    main()
