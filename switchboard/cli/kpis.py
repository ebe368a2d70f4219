"""``switchboard kpis [--by version|day|carrier]``: the KPIs from the analytics service, and (``--by version``) a
comparison of agent versions with confidence intervals and significance tests.

Reads ``GET /kpis`` of the analytics service (``--api``, default ``http://127.0.0.1:<SWITCHBOARD_ANALYTICS_PORT>``,
Bearer ``SWITCHBOARD_API_TOKEN`` when set). KPI definitions: ``services/analytics/kpis.py``.

Statistics (scipy):

- each rate's 95 % confidence interval is Wilson's score interval (``scipy.stats.binomtest(k, n)
  .proportion_ci(method="wilson")``);
- versions are compared pairwise against the first (baseline) version: rates by Fisher's exact test on the
  2×2 table (``scipy.stats.fisher_exact``), first-response latency by the Mann–Whitney U test
  (``scipy.stats.mannwhitneyu``), cost per call by Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``);
- a difference is called significant when p < ``--alpha`` (default 0.05). No correction for multiple
  comparisons is applied; the p-values are printed so a reader can apply one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from services.analytics.public import RATES

__all__ = ["Comparison", "compare_groups", "register", "wilson"]

console = Console()

_BY = {"version": "agent_version", "agent_version": "agent_version", "day": "day", "carrier": "carrier"}


def wilson(numerator: int, denominator: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of ``numerator / denominator`` (None without a denominator)."""
    from scipy.stats import binomtest

    if denominator <= 0:
        return None
    ci = binomtest(numerator, denominator).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One KPI of ``version`` against ``baseline``: both values, the test used, its p-value and verdict."""

    kpi: str
    baseline: str
    version: str
    baseline_value: float | None
    value: float | None
    test: str
    p_value: float | None
    significant: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON shape (``--json``)."""
        return {"kpi": self.kpi, "baseline": self.baseline, "version": self.version,
                "baseline_value": self.baseline_value, "value": self.value, "test": self.test,
                "p_value": self.p_value, "significant": self.significant}


def _p(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _rate_test(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    from scipy.stats import fisher_exact

    if not a["denominator"] or not b["denominator"]:
        return None
    table = [[a["numerator"], a["denominator"] - a["numerator"]], [b["numerator"], b["denominator"] - b["numerator"]]]
    return _p(float(fisher_exact(table).pvalue))


def _sample_test(kind: str, a: list[float], b: list[float]) -> float | None:
    from scipy.stats import mannwhitneyu, ttest_ind

    if len(a) < 2 or len(b) < 2:
        return None
    if kind == "mannwhitneyu":
        return _p(float(mannwhitneyu(a, b, alternative="two-sided").pvalue))
    if len(set(a)) < 2 and len(set(b)) < 2:  # both constant: identical → no difference; else certain
        return 1.0 if a[0] == b[0] else 0.0
    return _p(float(ttest_ind(a, b, equal_var=False).pvalue))


def compare_groups(groups: list[dict[str, Any]], *, alpha: float = 0.05) -> list[Comparison]:
    """Every version of ``groups`` (``GET /kpis?group_by=agent_version&samples=true``) against the first."""
    if len(groups) < 2:
        return []
    base = groups[0]
    out: list[Comparison] = []
    for other in groups[1:]:
        for kpi in RATES:
            p = _rate_test(base[kpi], other[kpi])
            out.append(Comparison(kpi, base["key"], other["key"], base[kpi]["value"], other[kpi]["value"],
                                  "Fisher exact", p, p is not None and p < alpha))
        p = _sample_test("mannwhitneyu", base.get("first_response_ms", []), other.get("first_response_ms", []))
        out.append(Comparison("first_response_p50_ms", base["key"], other["key"], base["first_response_p50_ms"],
                              other["first_response_p50_ms"], "Mann-Whitney U", p, p is not None and p < alpha))
        p = _sample_test("welch", base.get("cost_usd", []), other.get("cost_usd", []))
        out.append(Comparison("cost_per_call_usd", base["key"], other["key"], base["cost_per_call_usd"],
                              other["cost_per_call_usd"], "Welch t", p, p is not None and p < alpha))
    return out


def _fmt_rate(rate: dict[str, Any]) -> str:
    if rate["value"] is None:
        return "-"
    ci = wilson(rate["numerator"], rate["denominator"])
    assert ci is not None
    return f"{rate['value']:.0%} [{ci[0]:.0%}, {ci[1]:.0%}] ({rate['numerator']}/{rate['denominator']})"


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.6g}{unit}"


def kpis(by: str = typer.Option("version", "--by", help="version | day | carrier"),
         from_: str | None = typer.Option(None, "--from", help="ISO date/time (UTC), inclusive"),
         to: str | None = typer.Option(None, "--to", help="ISO date/time (UTC), exclusive"),
         alpha: float = typer.Option(0.05, help="significance level of the version comparison"),
         api: str | None = typer.Option(None, help="Analytics API base URL"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """KPIs per agent version, day or carrier; --by version also compares the versions (95 % CIs, tests)."""
    from switchboard.cli.up import settings_or_exit

    if by not in _BY:
        console.print(f"[red]--by must be version, day or carrier (not {by!r})[/red]")
        raise typer.Exit(2)
    settings = settings_or_exit()
    base = api or f"http://127.0.0.1:{settings.analytics_port}"
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    params: dict[str, str] = {"group_by": _BY[by], "samples": "true"}
    if from_:
        params["from"] = from_
    if to:
        params["to"] = to
    try:
        response = httpx.get(f"{base}/kpis", params=params, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        console.print(f"[red]analytics API at {base} unreachable: {exc}[/red]")
        raise typer.Exit(2) from None
    if response.status_code >= 400:
        console.print(f"[red]{response.status_code}: {response.text}[/red]")
        raise typer.Exit(2)
    groups: list[dict[str, Any]] = response.json()["groups"]
    comparisons = compare_groups(groups, alpha=alpha) if _BY[by] == "agent_version" else []
    if as_json:
        slim = [{k: v for k, v in g.items() if k not in ("first_response_ms", "cost_usd")} for g in groups]
        for g in slim:
            for kpi in RATES:
                g[kpi]["ci95"] = wilson(g[kpi]["numerator"], g[kpi]["denominator"])
        typer.echo(json.dumps({"group_by": _BY[by], "groups": slim,
                               "comparisons": [c.to_dict() for c in comparisons]}, indent=2))
        return
    table = Table(title=f"KPIs by {by} (ended calls; rates with 95 % Wilson intervals)")
    for column in (by, "calls", "first resp. p50/p95 ms", *RATES, "cost/call est."):
        table.add_column(column, overflow="fold")
    for g in groups:
        cost = _fmt(g["cost_per_call_usd"], " USD") + (f" ({g['unpriced_calls']} unpriced)"
                                                      if g["unpriced_calls"] else "")
        table.add_row(g["key"], str(g["calls"]),
                      f"{_fmt(g['first_response_p50_ms'])} / {_fmt(g['first_response_p95_ms'])}",
                      *(_fmt_rate(g[k]) for k in RATES), cost)
    console.print(table)
    if not groups:
        console.print("no ended calls in the range")
    if comparisons:
        ctable = Table(title=f"Versions against {comparisons[0].baseline} (significant: p < {alpha})")
        for column in ("kpi", "version", "baseline", "value", "test", "p", "verdict"):
            ctable.add_column(column)
        for c in comparisons:
            verdict = "[bold]significant[/bold]" if c.significant else (
                "not enough data" if c.p_value is None else "not significant")
            ctable.add_row(c.kpi, c.version, _fmt(c.baseline_value), _fmt(c.value), c.test,
                           "-" if c.p_value is None else f"{c.p_value:.3g}", verdict)
        console.print(ctable)
    elif _BY[by] == "agent_version":
        console.print("one version only: nothing to compare")


def register(app: typer.Typer) -> None:
    """Add ``kpis`` to the ``switchboard`` app."""
    app.command("kpis")(kpis)
