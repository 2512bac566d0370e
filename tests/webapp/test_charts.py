"""Bar chart geometry: readable, non-overlapping x-axis ticks that stay inside the SVG."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from webapp.charts import MAX_TICKS, WIDTH, bar_chart


def days(count: int) -> list[tuple[str, float]]:
    start = dt.date(2026, 11, 1)
    return [((start + dt.timedelta(days=i)).isoformat(), float(i)) for i in range(count)]


@pytest.mark.parametrize("count", [7, 30, 90])
def test_ticks_fit_inside_the_chart_without_crowding(count):
    chart = bar_chart("Tokens sold", days(count))
    ticks = [bar for bar in chart.bars if bar.tick]
    assert len(chart.bars) == count
    assert len(ticks) == (count if count <= MAX_TICKS else 3)
    assert ticks[0].tick == "11-01" and ticks[-1].tick == chart.bars[-1].label[5:]
    # about 7 units per character at the 13-unit font: neighbours never touch
    half = 7 * len("11-01") / 2
    for bar in ticks:
        left = {"start": 0, "middle": half, "end": 2 * half}[bar.anchor]
        assert bar.tick_x - left >= chart.plot_left - 1
        assert bar.tick_x - left + 2 * half <= WIDTH
    centres = [t.tick_x - {"start": -half, "middle": 0, "end": half}[t.anchor] for t in ticks]
    assert all(b - a > 2 * half for a, b in itertools.pairwise(centres))
