"""The analytics service's public API for tools outside the service (the ``switchboard kpis`` CLI, which reads
the figures themselves from ``GET /kpis``): the names of the KPIs, so callers never
import the service's private modules. Definitions: :mod:`services.analytics.kpis` and docs/analytics.md.

- :data:`RATES`: the rate KPIs of each ``/kpis`` group (each ``{value, numerator, denominator}``);
- :data:`DROP_REASONS`: the end reasons counted as dropped calls.
"""

from __future__ import annotations

from services.analytics.kpis import DROP_REASONS, RATES

__all__ = ["DROP_REASONS", "RATES"]
