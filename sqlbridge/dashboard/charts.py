"""Small bar charts as inline SVG, drawn on the server: no chart library, nothing fetched by the
browser. Colours come from CSS classes (the page's Content-Security-Policy allows no inline
style attributes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

WIDTH, HEIGHT, GAP = 480, 90, 2


def bars(values: Sequence[int], starts: Sequence[datetime], label: str, css: str) -> str:
    """One bar per hour; each bar's tooltip names its hour (UTC) and count."""
    n = max(len(values), 1)
    top = max(values, default=0) or 1
    step = WIDTH / n
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 14}" role="img" '
             f'aria-label="{escape(label)}, last {len(values)} hours" '
             'xmlns="http://www.w3.org/2000/svg">',
             f'<line class="axis" x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"/>']
    for i, (v, start) in enumerate(zip(values, starts, strict=True)):
        h = round(HEIGHT * v / top, 1)
        x = round(i * step + GAP / 2, 1)
        parts.append(f'<rect class="{css}" x="{x}" y="{HEIGHT - h}" width="{step - GAP:.1f}" '
                     f'height="{h}"><title>{start:%H}:00 UTC: {v}</title></rect>')
    parts.append(f'<text class="tick" x="0" y="{HEIGHT + 12}">-{len(values)}h</text>')
    parts.append(f'<text class="tick" x="{WIDTH}" y="{HEIGHT + 12}" text-anchor="end">now'
                 f' (max {top})</text></svg>')
    return "".join(parts)
