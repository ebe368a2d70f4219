"""``python -m services.session``: the session service (see :mod:`services.session.service`)."""

from __future__ import annotations

from shared.runtime import ServiceContext, run_service

from .service import SessionService


async def main(ctx: ServiceContext) -> None:
    """Take calls until the service is asked to stop, then end the calls in progress."""
    service = SessionService(ctx.bus, ctx.settings)
    await service.start()
    try:
        await ctx.stopping.wait()
    finally:
        await service.stop()


if __name__ == "__main__":
    run_service("session", main)
