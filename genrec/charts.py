"""Activity charts for reports: one small PNG per platform, returned base64-encoded for embedding.

Uses matplotlib's object API with the Agg canvas (no pyplot state), so charts can be drawn from any thread.
Platforms with real times are plotted against dates; sequence-position platforms (``time_kind == "sequence"``)
against their position in the user's sequence, never as dates.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from datetime import datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

EPOCH = datetime(1970, 1, 1)
COLOR = "#3b6ea5"


def position(timestamp: datetime) -> int:
    """The sequence position stored in a sequence platform's timestamp (epoch + position seconds)."""
    return int((timestamp - EPOCH).total_seconds())


def activity_chart(timestamps: Sequence[datetime], *, platform: str, time_kind: str, verb: str = "events") -> str:
    """Cumulative events of one platform over time (or sequence position): a base64 PNG."""
    figure = Figure(figsize=(6.0, 2.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ordered = sorted(timestamps)
    counts = list(range(1, len(ordered) + 1))
    if time_kind == "sequence":
        xs: list = [position(t) for t in ordered]
        axes.set_xlabel("position in the user's sequence")
    else:
        xs = ordered
        locator = AutoDateLocator()
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.step(xs, counts, where="post", color=COLOR, linewidth=1.5)
    axes.plot(xs, counts, "o", color=COLOR, markersize=3)
    axes.set_ylabel(f"items {verb}" if verb else "events")
    axes.set_title(f"{platform}: {len(ordered)} events", fontsize=10)
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
