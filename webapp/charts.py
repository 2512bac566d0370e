"""Geometry for small server-rendered SVG bar charts (the markup is a Jinja macro).

No chart library and no JavaScript: admin pages must render without any CDN, and a bar chart
is a handful of rectangles. Values are drawn as given; formatting is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 180
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 56, 22, 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # the x-axis label (a day)
    value_text: str  # what the bar's tooltip and the data table show


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
    bars = []
    for i, (label, value) in enumerate(points):
        height = plot_height * max(value, 0) / top
        bars.append(
            Bar(
                x=round(PAD_LEFT + i * slot + slot * 0.1, 2),
                y=round(HEIGHT - PAD_BOTTOM - height, 2),
                width=round(slot * 0.8, 2),
                height=round(height, 2),
                label=label,
                value_text=fmt(value),
            )
        )
    return BarChart(title=title, bars=bars, max_text=fmt(top))
