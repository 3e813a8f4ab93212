"""The report's drawing kit: figure data, style, axes helpers, labels from the catalogs, PNG/SVG output."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.io import write_bytes, write_text
from sweep.report.robustness import Objective
from sweep.spec import metrics
from sweep.spec.methods import HYPERPARAMETERS

DPI = 110


STYLE = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8.5,
    "svg.fonttype": "none",
}


RASTERIZE_ABOVE = 500


CROWDED = 500


LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class FigureFile:
    """A saved figure: file stem, one-sentence caption and the PNG bytes (for embedding)."""

    name: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class PlotData:
    """Everything the figures read: trials, their group labels and colours, the scored objective."""

    trials: pd.DataFrame
    objective: Objective
    labels: pd.Series
    scored: pd.Series
    sft_lengths: dict[str, float]

    @property
    def groups(self) -> list[str]:
        """Group labels in display order."""
        return sorted(self.labels.unique())

    def color(self, group: str) -> tuple:
        """A fixed colour per group, the same in every figure."""
        from matplotlib import colormaps

        groups = self.groups
        palette = colormaps["tab10" if len(groups) <= 10 else "tab20"]
        return palette(groups.index(group) % palette.N)


def metric_label(metric: str) -> str:
    """Axis label with units for a metric key ("gold.win_rate_vs_sft" names its judge)."""
    return metrics.axis_label(metric)


def param_label(column: str) -> str:
    name = column.removeprefix("param.")
    return HYPERPARAMETERS[name].label if name in HYPERPARAMETERS else name


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def figure(plot_width: float, plot_height: float, legend_labels: list[str] = (), bottom: float = 0.6):
    """A one-axes figure with fixed margins in inches and room on the right for a legend.

    Fixed margins instead of a layout engine: the layout pass would double the drawing time per figure.
    """
    from matplotlib.figure import Figure

    left, top = 0.9, 0.5
    legend = 0.75 + 0.068 * max(map(len, legend_labels)) if legend_labels else 0.25
    width, height = left + plot_width + legend, bottom + plot_height + top
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width, right=(left + plot_width) / width, bottom=bottom / height, top=1 - top / height
    )
    return fig, fig.subplots()


def legend(ax, title: str | None = None) -> None:
    """Legend outside the plot, right of it, so that it never hides data; markers drawn large and opaque."""
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, title=title)
    for handle in legend.legend_handles:
        handle.set_alpha(1)
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([20])


def plain_ticks(ax, values, max_ticks: int = 8) -> None:
    """Tick labels like 0.05 and 1e-06 (no mathtext); ticks at the values themselves when few."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    values = np.unique(np.asarray(values, dtype=float))
    if len(values) <= max_ticks:
        ax.set_xticks(values, labels=[f"{v:.3g}" for v in values])
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def log_x_if_wide(ax, values) -> None:
    """Log x-axis when the positive values span more than a factor of 10."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() > 10 * values.min():
        ax.set_xscale("log")


def point_style(points: int) -> dict:
    """Marker size and opacity for a scatter of `points` dots: smaller and lighter when they crowd."""
    return {"s": 14, "alpha": 0.75} if points <= CROWDED else {"s": 5, "alpha": 0.3}


def scatter(ax, x, y, **kwargs) -> None:
    ax.scatter(x, y, rasterized=len(x) > RASTERIZE_ABOVE, edgecolors="none", **kwargs)


def shared_bins(values: np.ndarray, metric: str) -> np.ndarray:
    """Bin edges shared by every method: 0.05-wide bins over [0, 1] for a win rate, else over the data."""
    found = metrics.metric(metric)
    if found is not None and found.bounded:
        return np.linspace(found.low, found.high, 21)
    low, high = values.min(), values.max()
    if low == high:
        low, high = low - max(0.5, abs(low) / 10), high + max(0.5, abs(high) / 10)
    return np.linspace(low, high, int(np.clip(np.sqrt(len(values)), 5, 30)) + 1)


def render(data: PlotData, name: str, builder: Callable, out_dir: Path) -> FigureFile | None:
    """Build figure `name`, write its PNG and SVG to out_dir and return it; None when it has no data."""
    from matplotlib import rc_context

    with rc_context(STYLE):
        drawn = builder(data)
        if drawn is None:
            return None
        fig, caption = drawn
        png = io.BytesIO()
        fig.savefig(png, format="png", pil_kwargs={"compress_level": 1})
        svg = io.StringIO()
        fig.savefig(svg, format="svg", metadata={"Date": None})
    write_bytes(out_dir / f"{name}.png", png.getvalue())
    write_text(out_dir / f"{name}.svg", svg.getvalue())
    return FigureFile(name, caption, png.getvalue())


def use_agg() -> None:
    """Select matplotlib's Agg backend, unless this process already uses pyplot (then keep its backend)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
