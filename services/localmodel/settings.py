"""The local model's own settings: ``shared.config.Settings`` (host, ``localmodel_port``, ``localmodel_mode``,
``localmodel_token``, ``localmodel_sip_port``, ``localmodel_sip_webhook_url``,
``openai_webhook_secret``) plus ``SWITCHBOARD_LOCALMODEL_PACING`` (``realtime`` | ``fast``, default realtime) and
``SWITCHBOARD_LOCALMODEL_CHUNK_MS`` (output audio delta length, 20–100 ms, default 40), overridable by CLI
flags (``python -m services.localmodel --help``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from shared.config import ConfigError, Settings

__all__ = ["ECHO_MODEL", "LocalModelSettings"]

ECHO_MODEL = "switchboard-echo"
"""A session opened with ``?model=switchboard-echo`` runs in echo mode whatever the server's mode (load tests
and drills: an agent spec with ``model: switchboard-echo`` gets echo calls on an agent-mode server)."""


@dataclass(frozen=True)
class LocalModelSettings:
    """Where and how the local model serves."""

    host: str = "127.0.0.1"
    port: int = 8765
    """TCP port; 0 picks a free one (tests)."""
    mode: Literal["agent", "echo"] = "agent"
    token: str | None = None
    """When set, clients must send ``Authorization: Bearer <token>``."""
    pacing: Literal["realtime", "fast"] = "realtime"
    """Output audio paced at real time, or sent as fast as synthesised."""
    chunk_ms: int = 40
    """Length of each ``response.output_audio.delta`` (20–100 ms)."""
    max_sessions: int = 1000
    """Connections beyond this are refused with HTTP 503."""
    sip_port: int | None = None
    """Port of the simulated SIP side (:mod:`.sip`); None: off, 0: a free port (tests)."""
    sip_webhook_url: str = "http://127.0.0.1:8080/openai/webhook"
    """Where the SIP side POSTs ``realtime.call.incoming``."""
    webhook_secret: str | None = None
    """The Standard Webhooks key the SIP side signs with (``SWITCHBOARD_OPENAI_WEBHOOK_SECRET``)."""

    def __post_init__(self) -> None:
        if self.pacing not in ("realtime", "fast"):
            raise ConfigError(f"SWITCHBOARD_LOCALMODEL_PACING must be realtime or fast, not {self.pacing!r}")
        if not 20 <= self.chunk_ms <= 100:
            raise ConfigError(f"SWITCHBOARD_LOCALMODEL_CHUNK_MS must be within 20..100, not {self.chunk_ms}")
        if self.mode not in ("agent", "echo"):
            raise ConfigError(f"SWITCHBOARD_LOCALMODEL_MODE must be agent or echo, not {self.mode!r}")

    @classmethod
    def from_env(cls, settings: Settings, **overrides: object) -> LocalModelSettings:
        """Settings from ``settings`` and the ``SWITCHBOARD_LOCALMODEL_*`` environment, then ``overrides``
        (CLI flags; None values are ignored).

        Raises:
            ConfigError: an invalid pacing, chunk length or mode.
        """
        try:
            chunk_ms = int(os.environ.get("SWITCHBOARD_LOCALMODEL_CHUNK_MS", "40"))
        except ValueError:
            raise ConfigError("SWITCHBOARD_LOCALMODEL_CHUNK_MS must be an integer") from None
        values: dict[str, object] = {
            "host": settings.host, "port": settings.localmodel_port, "mode": settings.localmodel_mode,
            "token": settings.localmodel_token,
            "pacing": os.environ.get("SWITCHBOARD_LOCALMODEL_PACING", "realtime").strip().lower() or "realtime",
            "chunk_ms": chunk_ms, "sip_port": settings.localmodel_sip_port or None,
            "sip_webhook_url": settings.effective_sip_webhook_url, "webhook_secret": settings.openai_webhook_secret,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
