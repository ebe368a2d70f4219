"""``python -m services.session``: the session service (see :mod:`services.session.service`).

Runs on uvloop (:func:`shared.runtime.install_uvloop`): each caller frame and each logged event is socket I/O,
and uvloop's loop costs less per wakeup (``bench/session.py``, ``docs/session.md``).
"""

from __future__ import annotations

from shared.runtime import ServiceContext, install_uvloop, run_service

from .service import SessionService


async def main(ctx: ServiceContext) -> None:
    """Take calls until the service is asked to stop, then hand the calls in progress over to peers (those no
    peer takes are served to their end, at most ``SWITCHBOARD_DRAIN_S``)."""
    service = SessionService(ctx.bus, ctx.settings)
    await service.start()
    try:
        await ctx.stopping.wait()
    finally:
        await service.stop(drain_s=ctx.settings.drain_s)


if __name__ == "__main__":
    install_uvloop()
    run_service("session", main)
