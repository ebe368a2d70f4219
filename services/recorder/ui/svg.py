"""Server-side SVG charts for the console (no JavaScript library): grouped bar charts.

Every label is XML-escaped; sizes are in px; values are drawn to scale from 0 to the largest value (or 1 for
rates).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart"]

_COLOURS = ("#3b6fd8", "#e0873a", "#3f9d5a", "#b6484b", "#7d5bbd", "#5f6b7a")


def bar_chart(title: str, categories: Sequence[str], series: dict[str, Sequence[float | None]], *,
              unit: str = "", percent: bool = False, width: int = 560, height: int = 220) -> str:
    """An SVG grouped bar chart: one group per category, one bar per series (None = no bar).

    ``percent`` draws rates (0–1) as percentages on a 0–100 % scale.
    """
    left, right, top, bottom = 48, 12, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs if v is not None]
    top_value = 1.0 if percent else max(values, default=0.0) or 1.0
    n_cat, n_ser = max(len(categories), 1), max(len(series), 1)
    group_w = plot_w / n_cat
    bar_w = max(2.0, group_w * 0.8 / n_ser)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        label = f"{frac * 100:.0f}%" if percent else f"{top_value * frac:.4g}{unit}"
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="axis">{escape(label)}</text>')
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
    for ci, cat in enumerate(categories):
        x0 = left + ci * group_w + group_w * 0.1
        for si, (name, vs) in enumerate(series.items()):
            v = vs[ci] if ci < len(vs) else None
            if v is None:
                continue
            h = plot_h * min(max(v / top_value, 0.0), 1.0)
            shown = f"{v:.0%}" if percent else f"{v:.4g}{unit}"
            parts.append(f'<rect x="{x0 + si * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{h:.1f}" fill="{_COLOURS[si % len(_COLOURS)]}"><title>{escape(name)} '
                         f'{escape(cat)}: {escape(shown)}</title></rect>')
        parts.append(f'<text x="{left + ci * group_w + group_w / 2:.1f}" y="{top + plot_h + 14}" '
                     f'text-anchor="middle" class="axis">{escape(cat)}</text>')
    for si, name in enumerate(series):
        x = left + si * 130
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" '
                     f'fill="{_COLOURS[si % len(_COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="{height - 5}" class="axis">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
