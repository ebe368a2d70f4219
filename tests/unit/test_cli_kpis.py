"""``switchboard kpis --by version`` statistics (switchboard/cli/kpis.py, scipy)."""

from __future__ import annotations

from typing import Any

import pytest

from services.analytics.kpis import RATES
from switchboard.cli.kpis import compare_groups, wilson


def group(key: str, completed: int, calls: int, latencies: list[float]) -> dict[str, Any]:
    rates: dict[str, dict[str, Any]] = {k: {"value": None, "numerator": 0, "denominator": 0} for k in RATES}
    rates["task_completion"] = {"value": completed / calls, "numerator": completed, "denominator": calls}
    return {"key": key, "calls": calls, **rates, "first_response_p50_ms": sorted(latencies)[len(latencies) // 2],
            "first_response_ms": latencies, "cost_per_call_usd": 0.0, "cost_usd": [0.0] * calls}


def test_wilson_interval() -> None:
    low, high = wilson(8, 10) or (0.0, 0.0)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) is None


def test_clear_difference_is_significant_and_equal_groups_are_not() -> None:
    a = group("1", 10, 100, [300.0 + i for i in range(50)])
    b = group("2", 60, 100, [900.0 + i for i in range(50)])
    by = {c.kpi: c for c in compare_groups([a, b])}
    assert by["task_completion"].significant and by["task_completion"].p_value is not None
    assert by["first_response_p50_ms"].significant
    assert by["drop_rate"].p_value is None and not by["drop_rate"].significant  # no denominator
    assert not by["cost_per_call_usd"].significant  # both 0
    same = {c.kpi: c for c in compare_groups([a, group("2", 10, 100, [300.0 + i for i in range(50)])])}
    assert not same["task_completion"].significant and not same["first_response_p50_ms"].significant
    assert compare_groups([a]) == []
