"""Per-token prices used for the calls' cost estimate (USD per 1,000,000 tokens).

Source: OpenAI's published prices for ``gpt-realtime`` at GA (https://openai.com/api/pricing/, August 2025):
audio input $32, cached audio input $0.40, audio output $64; text input $4, cached text input $0.40,
text output $16. ``gpt-realtime-mini``: audio $10 / $0.30 cached / $20 out, text $0.60 / $0.06 / $2.40.
The estimate covers the model's ``response.done`` usage only (not input transcription, billed separately),
and is labelled an estimate everywhere it is shown. A local-model call reports usage of zero cost when its
usage is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRICES", "Prices", "Usage", "estimate_cost"]


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens."""

    text_in: float
    text_cached: float
    text_out: float
    audio_in: float
    audio_cached: float
    audio_out: float


PRICES: dict[str, Prices] = {
    "gpt-realtime": Prices(4.0, 0.40, 16.0, 32.0, 0.40, 64.0),
    "gpt-realtime-mini": Prices(0.60, 0.06, 2.40, 10.0, 0.30, 20.0),
}


@dataclass(slots=True)
class Usage:
    """Token usage summed over a call's ``response.done`` events (protocols.md §1.7)."""

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


def estimate_cost(usage: Usage, model: str = "gpt-realtime") -> float:
    """Estimated USD for ``usage`` at ``model``'s prices (unknown models use ``gpt-realtime``'s).

    Cached tokens are billed at the cached rate and removed from the uncached count of their modality.
    """
    p = PRICES.get(model, PRICES["gpt-realtime"])
    text_in = max(0, usage.input_text_tokens - usage.cached_text_tokens)
    audio_in = max(0, usage.input_audio_tokens - usage.cached_audio_tokens)
    total = (text_in * p.text_in + usage.cached_text_tokens * p.text_cached + usage.output_text_tokens * p.text_out
             + audio_in * p.audio_in + usage.cached_audio_tokens * p.audio_cached
             + usage.output_audio_tokens * p.audio_out)
    return round(total / 1_000_000, 6)
