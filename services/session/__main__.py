"""``python -m services.session``: the session service (see :mod:`services.session.service`).

Runs on uvloop (:func:`shared.runtime.install_uvloop`): each caller frame and each logged event is socket I/O,
and uvloop's loop costs less per wakeup (``bench/session.py``, ``docs/session.md``). Its metrics are served on
``SWITCHBOARD_SESSION_METRICS_PORT`` (:mod:`shared.metrics_http`).
"""

from __future__ import annotations

from shared.metrics_http import serve_metrics
from shared.redact import Redactor, install_log_redaction
from shared.runtime import ServiceContext, install_uvloop, run_service

from .service import SessionService


async def main(ctx: ServiceContext) -> None:
    """Take calls until the service is asked to stop, then hand the calls in progress over to peers (those no
    peer takes are served to their end, at most ``SWITCHBOARD_DRAIN_S``). With ``SWITCHBOARD_REDACTION`` every
    log line of the process is redacted (docs/compliance.md)."""
    settings = ctx.settings
    if settings.redaction:
        install_log_redaction(Redactor(settings.redaction_patterns, region=settings.redaction_region))
    metrics = serve_metrics(settings.session_metrics_port, settings.host, variable="SWITCHBOARD_SESSION_METRICS_PORT")
    if metrics is not None:
        ctx.stack.callback(metrics.close)
    service = SessionService(ctx.bus, settings)
    await service.start()
    try:
        await ctx.stopping.wait()
    finally:
        await service.stop(drain_s=ctx.settings.drain_s)


if __name__ == "__main__":
    install_uvloop()
    run_service("session", main)
