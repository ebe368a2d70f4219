"""Settings of the tool worker (pydantic-settings, environment first, prefix ``SWITCHBOARD_``).

Variables: ``SWITCHBOARD_TOOL_MODULES`` (comma-separated modules whose :class:`~.framework.Tool` objects the
worker serves; default ``services.tools.receptionist,services.tools.payments``),
``SWITCHBOARD_TRANSFER_NUMBER`` (where ``transfer_to_human`` sends the caller), the clinic's hours
``SWITCHBOARD_CLINIC_OPEN`` / ``_CLOSE`` (``HH:MM``), ``SWITCHBOARD_CLINIC_SLOT_MINUTES``,
``SWITCHBOARD_CLINIC_DAYS`` (e.g. ``mon,tue,wed,thu,fri``), ``SWITCHBOARD_CLINIC_TIMEZONE`` (IANA name;
unset = the machine's local zone),
``SWITCHBOARD_BOOKING_HORIZON_DAYS``, ``SWITCHBOARD_TOOLS_SEED`` (seed demo data at start; default true) and
``SWITCHBOARD_CAPTURE_KEY`` (opens sealed keypad captures; ``take_payment``).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DAY_NAMES", "ToolsSettings"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day abbreviations in ``datetime.date.weekday()`` order."""


def _parse_hhmm(value: str) -> dt.time:
    hours, _, minutes = value.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"expected HH:MM, got {value!r}")
    return dt.time(int(hours), int(minutes))


class ToolsSettings(BaseSettings):
    """Tool-worker settings. Field ``x`` is read from ``SWITCHBOARD_X``."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", extra="ignore", frozen=True)

    tool_modules: str = "services.tools.receptionist,services.tools.payments"
    """Comma-separated importable modules; every module-level Tool in them is served."""
    transfer_number: str = "+15559870100"
    """E.164 number ``transfer_to_human`` transfers to (``control.to``)."""
    clinic_open: str = "09:00"
    """First slot start (``HH:MM``, clinic time)."""
    clinic_close: str = "17:00"
    """Closing time (``HH:MM``); the last slot ends at or before it."""
    clinic_slot_minutes: int = Field(60, ge=5, le=240)
    """Length of one appointment slot (minutes); slots start at ``clinic_open`` + k × this."""
    clinic_days: str = ",".join(DAY_NAMES)
    """Open days (comma-separated ``mon``…``sun``); default every day, so "tomorrow" is always bookable."""
    clinic_timezone: str | None = None
    """IANA zone of the clinic (e.g. ``America/New_York``); unset = the machine's local zone."""
    booking_horizon_days: int = Field(90, ge=1, le=3660)
    """How many days ahead a booking may be made."""
    tools_seed: bool = True
    """Seed the demo customers at worker start (idempotent); set ``SWITCHBOARD_TOOLS_SEED=0`` in production."""
    capture_key: str | None = None
    """``SWITCHBOARD_CAPTURE_KEY``: opens keypad captures sealed by the session (:mod:`shared.sealed`)."""

    @field_validator("clinic_open", "clinic_close")
    @classmethod
    def _check_time(cls, value: str) -> str:
        _parse_hhmm(value)
        return value

    @field_validator("clinic_days")
    @classmethod
    def _check_days(cls, value: str) -> str:
        names = [d.strip().lower() for d in value.split(",") if d.strip()]
        unknown = [d for d in names if d not in DAY_NAMES]
        if unknown or not names:
            raise ValueError(f"clinic days must be among {','.join(DAY_NAMES)}; got {value!r}")
        return ",".join(names)

    @field_validator("clinic_timezone")
    @classmethod
    def _check_zone(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @property
    def modules(self) -> list[str]:
        """:attr:`tool_modules` split into module names."""
        return [m.strip() for m in self.tool_modules.split(",") if m.strip()]

    @property
    def open_time(self) -> dt.time:
        """:attr:`clinic_open` parsed."""
        return _parse_hhmm(self.clinic_open)

    @property
    def close_time(self) -> dt.time:
        """:attr:`clinic_close` parsed."""
        return _parse_hhmm(self.clinic_close)

    @property
    def open_weekdays(self) -> frozenset[int]:
        """Open days as ``date.weekday()`` numbers (Monday = 0)."""
        return frozenset(DAY_NAMES.index(d) for d in self.clinic_days.split(","))

    @property
    def tzinfo(self) -> dt.tzinfo:
        """The clinic's time zone (the machine's local zone when unset)."""
        if self.clinic_timezone:
            return ZoneInfo(self.clinic_timezone)
        local = dt.datetime.now().astimezone().tzinfo
        return local if local is not None else dt.UTC
