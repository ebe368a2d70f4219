"""Agent versions and rollouts (shared/rollout.py) and the configured price table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from services.session.agent import load_agent
from shared import rollout
from shared.pricing import PriceTableError, Usage, estimate_cost, load_prices, price_for

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, weights: tuple[float, float]) -> Path:
    (tmp_path / "a.yaml").write_text("name: a\nversion: '1'\ninstructions: x\n")
    (tmp_path / "a-v2.yaml").write_text("name: a\nversion: '2'\ninstructions: y\n")
    (tmp_path / "rollout.yaml").write_text(
        f"agents:\n  a:\n    - {{version: '1', spec: a.yaml, weight: {weights[0]}}}\n"
        f"    - {{version: '2', spec: a-v2.yaml, weight: {weights[1]}}}\n")
    return tmp_path


def test_sticky_per_caller_and_split_by_weight(tmp_path: Path) -> None:
    agents = _write(tmp_path, (50, 50))
    callers = [f"+1555{i:07d}" for i in range(2000)]
    first = [rollout.choose(agents, "a", c).version for c in callers]
    assert first == [rollout.choose(agents, "a", c).version for c in callers]  # same caller, same version
    counts = Counter(first)
    assert set(counts) == {"1", "2"} and 850 < counts["1"] < 1150
    assert rollout.choose(agents, "a", callers[0]).spec in (agents / "a.yaml", agents / "a-v2.yaml")
    assert rollout.spec_path(agents, "a", "2") == agents / "a-v2.yaml"
    assert rollout.spec_path(agents, "a", "9") is None


def test_weights_and_fallbacks(tmp_path: Path) -> None:
    agents = _write(tmp_path, (1, 99))
    counts = Counter(rollout.choose(agents, "a", f"c{i}").version for i in range(1000))
    assert counts["2"] > 950
    # an agent the rollout does not list gets its spec's version
    (tmp_path / "b.yaml").write_text("name: b\nversion: '7'\ninstructions: x\n")
    assert rollout.choose(agents, "b", "x") == rollout.Choice("7", None)
    (tmp_path / "rollout.yaml").write_text("agents: {a: [{version: '1', spec: a.yaml, weight: 0}]}\n")
    with pytest.raises(rollout.RolloutError, match="weight"):
        rollout.load_rollout(agents)
    assert rollout.choose(agents, "a", "x").version == "1"  # a broken file is ignored, calls go on


def test_repository_rollout_has_two_versions() -> None:
    rolled = rollout.load_rollout(ROOT / "agents").agents["receptionist"]
    specs = {v.version: load_agent(ROOT / "agents" / v.spec) for v in rolled}
    assert {version: spec.version for version, spec in specs.items()} == {"1": "1", "2": "2"}


def test_price_table(tmp_path: Path) -> None:
    usage = Usage(output_audio_tokens=1_000_000)
    assert estimate_cost(usage, "gpt-realtime-2025-08-28") == 64.0
    assert estimate_cost(usage, "unknown-model") is None
    assert estimate_cost(usage, "unknown-model", billed=False) == 0.0
    custom = tmp_path / "prices.yaml"
    custom.write_text("models:\n  m: {text_in: 1, text_cached: 0, text_out: 2, audio_in: 3, audio_cached: 0, "
                      "audio_out: 4}\n")
    table = load_prices(custom)
    assert estimate_cost(usage, "m", table=table) == 4.0
    assert price_for("m-mini", table) is not None and price_for("mx", table) is None
    custom.write_text("models:\n  m: {text_in: 1}\n")
    with pytest.raises(PriceTableError, match=r"m\.text_cached"):
        load_prices(custom)
