"""Geometry for small server-rendered SVG bar charts (the markup is a Jinja macro).

No chart library and no JavaScript: admin pages must render without any CDN, and a bar chart
is a handful of rectangles. Values are drawn as given; formatting is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A narrow viewBox: the SVG scales to its card, so at 390 px (about 330 px of chart) the 13-unit
# tick text still reads at about 11 px, and at 1280 px (two charts a row) at about 15 px.
WIDTH, HEIGHT = 400, 200
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 64, 24, 10
MAX_TICKS = 7  # up to this many days every bar is labelled; above, only first, middle, last


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the x-axis label (a day)
    value_text: str  # what the bar's tooltip and the data table show
    tick: str = ""  # the x-axis text under this bar ("" for none)
    anchor: str = "middle"  # SVG text-anchor, so the first and last ticks stay inside the box
    tick_x: float = 0.0


@dataclass(frozen=True)
class BarChart:
    title: str
    bars: list[Bar]
    max_text: str  # the value at the top of the y axis
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = PAD_LEFT
    plot_bottom: int = HEIGHT - PAD_BOTTOM


def bar_chart(
    title: str,
    points: Sequence[tuple[str, float]],
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
) -> BarChart:
    """Lay out one bar per (label, value); the tallest bar fills the plot height."""
    top = max((value for _, value in points), default=0) or 1
    plot_height = HEIGHT - PAD_BOTTOM - PAD_TOP
    slot = (WIDTH - PAD_LEFT) / max(len(points), 1)
    count = len(points)
    labelled = set(range(count)) if count <= MAX_TICKS else {0, count // 2, count - 1}
    bars = []
    for i, (label, value) in enumerate(points):
        height = plot_height * max(value, 0) / top
        x = PAD_LEFT + i * slot + slot * 0.1
        anchor = "middle"
        tick_x = x + slot * 0.4
        if count > MAX_TICKS and i == 0:
            anchor, tick_x = "start", x
        elif count > MAX_TICKS and i == count - 1:
            anchor, tick_x = "end", x + slot * 0.8
        bars.append(
            Bar(
                x=round(x, 2),
                y=round(HEIGHT - PAD_BOTTOM - height, 2),
                width=round(slot * 0.8, 2),
                height=round(height, 2),
                label=label,
                value_text=fmt(value),
                tick=label[5:] if i in labelled else "",  # MM-DD of an ISO day
                anchor=anchor,
                tick_x=round(tick_x, 2),
            )
        )
    return BarChart(title=title, bars=bars, max_text=fmt(top))
