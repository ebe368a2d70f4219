"""Per-token prices for the calls' cost estimate (USD per 1,000,000 tokens), read from configuration.

The price table is a YAML file (``models: {<name>: {text_in, text_cached, text_out, audio_in, audio_cached,
audio_out}}``): ``SWITCHBOARD_PRICES`` when set, else the packaged ``services/recorder/prices.yaml`` (OpenAI's
published ``gpt-realtime`` and ``gpt-realtime-mini`` prices at GA, https://openai.com/api/pricing/).

- A model is priced by its exact name, else by the longest table key ``k`` such that the name starts with
  ``k + "-"`` (OpenAI reports dated names such as ``gpt-realtime-2025-08-28``).
- A model matching no key is **unpriced**: :func:`estimate_cost` returns None and the API/CLI/console show
  "unpriced" — never another model's price.
- A call whose session connected without an API key (the embedded local model, or any keyless endpoint; the
  session says so in ``call.<id>.session.model_connected`` as ``billed: false``) costs 0.

The estimate covers the model's ``response.done`` usage only (not input transcription, billed separately),
and is labelled an estimate everywhere it is shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import yaml

__all__ = ["DEFAULT_PRICES_FILE", "PriceTableError", "Prices", "Usage", "estimate_cost", "load_prices",
           "price_for", "price_table"]

DEFAULT_PRICES_FILE = Path(__file__).parent / "prices.yaml"


class PriceTableError(ValueError):
    """The price file is missing, not YAML, or an entry lacks a numeric field; the message says which."""


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens for one model."""

    text_in: float
    text_cached: float
    text_out: float
    audio_in: float
    audio_cached: float
    audio_out: float


def load_prices(path: Path) -> dict[str, Prices]:
    """Read a price table file (shape in the module docstring).

    Raises:
        PriceTableError: unreadable file, not a mapping with ``models``, or a missing/non-numeric price.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PriceTableError(f"cannot read price table {path}: {exc}") from None
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise PriceTableError(f"price table {path} must be a mapping with a 'models' mapping")
    table: dict[str, Prices] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise PriceTableError(f"price table {path}: {name!r} must be a mapping")
        values: dict[str, float] = {}
        for f in fields(Prices):
            value = entry.get(f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise PriceTableError(f"price table {path}: {name}.{f.name} must be a number >= 0")
            values[f.name] = float(value)
        table[str(name)] = Prices(**values)
    return table


@lru_cache(maxsize=4)
def _cached_table(path: str) -> dict[str, Prices]:
    return load_prices(Path(path))


def price_table() -> dict[str, Prices]:
    """The table in force: ``SWITCHBOARD_PRICES`` (a path) when set, else the packaged file (read once)."""
    return _cached_table(os.environ.get("SWITCHBOARD_PRICES") or str(DEFAULT_PRICES_FILE))


def price_for(model: str, table: dict[str, Prices] | None = None) -> Prices | None:
    """``model``'s prices by exact name, else by the longest ``<key>-`` prefix; None when unpriced."""
    table = price_table() if table is None else table
    if model in table:
        return table[model]
    matches = [k for k in table if model.startswith(k + "-")]
    return table[max(matches, key=len)] if matches else None


@dataclass(slots=True)
class Usage:
    """Token usage summed over a call's ``response.done`` events (https://platform.openai.com/docs/api-reference/realtime-server-events/response/done)."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0

    def add(self, usage: dict[str, object]) -> None:
        """Add one ``response.usage`` object (missing fields count as 0)."""
        def num(obj: object, key: str) -> int:
            value = obj.get(key) if isinstance(obj, dict) else None
            return int(value) if isinstance(value, int | float) else 0

        inp = usage.get("input_token_details")
        out = usage.get("output_token_details")
        cached = inp.get("cached_tokens_details") if isinstance(inp, dict) else None
        self.input_tokens += num(usage, "input_tokens")
        self.output_tokens += num(usage, "output_tokens")
        self.input_text_tokens += num(inp, "text_tokens")
        self.input_audio_tokens += num(inp, "audio_tokens")
        self.cached_tokens += num(inp, "cached_tokens")
        self.cached_text_tokens += num(cached, "text_tokens")
        self.cached_audio_tokens += num(cached, "audio_tokens")
        self.output_text_tokens += num(out, "text_tokens")
        self.output_audio_tokens += num(out, "audio_tokens")


def estimate_cost(usage: Usage, model: str = "gpt-realtime", *, billed: bool = True,
                  table: dict[str, Prices] | None = None) -> float | None:
    """Estimated USD for ``usage`` at ``model``'s prices, rounded to micro-dollars.

    Returns 0.0 when ``billed`` is False (the local model), None when ``model`` is unpriced. Cached tokens
    are billed at the cached rate and removed from the uncached count of their modality.
    """
    if not billed:
        return 0.0
    p = price_for(model, table)
    if p is None:
        return None
    text_in = max(0, usage.input_text_tokens - usage.cached_text_tokens)
    audio_in = max(0, usage.input_audio_tokens - usage.cached_audio_tokens)
    total = (text_in * p.text_in + usage.cached_text_tokens * p.text_cached + usage.output_text_tokens * p.text_out
             + audio_in * p.audio_in + usage.cached_audio_tokens * p.audio_cached
             + usage.output_audio_tokens * p.audio_out)
    return round(total / 1_000_000, 6)
