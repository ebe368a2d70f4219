"""``python -m services.localmodel [--host H] [--port P] [--mode agent|echo] [--pacing realtime|fast]``.

Defaults come from ``shared.config.Settings`` (``SWITCHBOARD_HOST``, ``SWITCHBOARD_LOCALMODEL_PORT``,
``SWITCHBOARD_LOCALMODEL_MODE``, ``SWITCHBOARD_LOCALMODEL_TOKEN``) and ``SWITCHBOARD_LOCALMODEL_PACING``; with
``SWITCHBOARD_LOCALMODEL_SIP_PORT`` also the simulated SIP side (:mod:`services.localmodel.sip`), which signs its
webhooks with ``SWITCHBOARD_OPENAI_WEBHOOK_SECRET`` and sends them to ``SWITCHBOARD_LOCALMODEL_SIP_WEBHOOK_URL``.
SIGTERM/SIGINT close every session and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from services.localmodel.server import LocalModelServer
from services.localmodel.settings import LocalModelSettings
from shared.config import get_settings
from shared.runtime import tune_gc
from shared.telemetry import setup_logging

log = logging.getLogger("services.localmodel")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (every flag optional; None = use the environment/settings)."""
    parser = argparse.ArgumentParser(prog="python -m services.localmodel",
                                     description="Offline speech-to-speech server speaking the Realtime GA API")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--mode", choices=["agent", "echo"])
    parser.add_argument("--pacing", choices=["realtime", "fast"])
    parser.add_argument("--chunk-ms", dest="chunk_ms", type=int)
    return parser.parse_args(argv)


async def serve(settings: LocalModelSettings) -> None:
    """Run the server until SIGTERM/SIGINT (a process entry point: start-up objects are frozen out of garbage
    collection, see :func:`shared.runtime.tune_gc`)."""
    server = LocalModelServer(settings)
    await server.start()
    tune_gc()
    log.info("localmodel listening on ws://%s:%d/v1/realtime (mode %s, pacing %s)", settings.host, server.port,
             settings.mode, settings.pacing)
    if server.sip_port is not None:
        log.info("localmodel SIP side on http://%s:%d (SIP legs /sip/leg, calls API /v1/realtime/calls, webhook %s)",
                 settings.host, server.sip_port, settings.sip_webhook_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
        log.info("localmodel stopped")


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    setup_logging("switchboard-localmodel")
    args = parse_args(argv)
    settings = LocalModelSettings.from_env(get_settings(), **vars(args))
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
