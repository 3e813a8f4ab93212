"""Report figures: one question each, saved as PNG and SVG; a figure without data is skipped."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.report.canvas import (
    DPI,
    LINE_STYLES,
    FigureFile,
    PlotData,
    figure,
    legend,
    log_x_if_wide,
    metric_label,
    param_label,
    plain_ticks,
    point_style,
    render,
    scatter,
    shared_bins,
    slug,
    use_agg,
)
from sweep.report.load import param_columns
from sweep.report.robustness import (
    HELD_OUT,
    SELECTED,
    expected_best_band,
    expected_best_of_k,
    held_out_best_of_k,
)
from sweep.report.timing import stage_times

LEARNING_RATE = "param.learning_rate"


def performance_hist(data: PlotData):
    """How is the objective distributed over all trials of each method (shared bins and scale)?"""
    from matplotlib.figure import Figure

    values = data.scored
    groups = [g for g in data.groups if values[data.labels == g].notna().any()]
    if not groups:
        return None
    edges = shared_bins(values.dropna().to_numpy(), data.objective.metric)
    columns = min(len(groups), 4)
    rows = math.ceil(len(groups) / columns)
    width, height = 0.8 + 3.0 * columns + 0.3 * (columns - 1), 1.1 + 2.2 * rows + 1.0 * (rows - 1)
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=0.8 / width,
        right=1 - 0.2 / width,
        bottom=0.6 / height,
        top=1 - 1.1 / height,
        wspace=0.1,
        hspace=1.0 / 2.2,
    )
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for index, (ax, group) in enumerate(zip(axes.flat, groups)):
        selected = data.labels == group
        group_values = values[selected].dropna()
        ax.hist(
            group_values,
            bins=edges,
            weights=np.full(len(group_values), 100 / len(group_values)),
            color=data.color(group),
            edgecolor="white",
        )
        ax.axvline(group_values.median(), color="black", linestyle="--", linewidth=1, label="median")
        states = data.trials.loc[selected, "state"]
        trials = "trial" if len(group_values) == 1 else "trials"
        failed = int((states == "failed").sum())
        failed_note = "in" if data.objective.failures_as_worst else "left out"
        title = f"{group}\n{len(group_values)} {trials}, {int((states == 'diverged').sum())} diverged"
        ax.set_title(f"{title}, {failed} failed ({failed_note})", fontsize=9)
        if index % columns == 0:
            ax.set_ylabel("share of trials (%)")
        if index + columns >= len(groups):
            ax.set_xlabel(metric_label(data.objective.metric))
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper right")
    fig.suptitle(f"Robustness: {data.objective.metric} over all trials of each method", y=1 - 0.2 / height)
    caption = (
        f"Distribution of {data.objective.metric} over every trial of each method on one shared scale: "
        "a method whose mass sits near its best is robust to its hyperparameters, a wide or left-heavy "
        f"histogram means many settings give a poor model. {data.objective.rule}"
    )
    return fig, caption


def _distribution(data: PlotData, column: str, title: str, caption: str, references: dict[str, float]):
    """Box plot with one dot per trial of `column` for each group, with optional SFT reference lines, and
    ±1 standard error bars where the trials recorded `column`_se."""
    if column not in data.trials.columns:
        return None
    per_group = {g: data.trials.loc[data.labels == g, column].dropna() for g in data.groups}
    per_group = {g: v for g, v in per_group.items() if len(v)}
    if not per_group:
        return None
    groups = list(per_group)
    rotate = len(groups) > 4 or max(map(len, groups)) > 14
    names = [f"SFT model ({sweep})" if len(references) > 1 else "SFT model" for sweep in references]
    fig, ax = figure(
        max(4.0, 0.9 * len(groups)),
        3.4,
        ["one trial", *names],
        bottom=0.65 + (0.036 * max(map(len, groups)) if rotate else 0),
    )
    rng = np.random.default_rng(0)
    style = point_style(sum(map(len, per_group.values())))
    for position, (group, values) in enumerate(per_group.items()):
        jitter = position + rng.uniform(-0.2, 0.2, len(values))
        label = "one trial" if position == 0 else None
        scatter(ax, jitter, values, color=data.color(group), label=label, **style)
        if f"{column}_se" in data.trials.columns:
            errors = data.trials.loc[values.index, f"{column}_se"].astype(float)
            ax.errorbar(jitter, values, yerr=errors, fmt="none", ecolor=data.color(group), elinewidth=0.8)
    ax.boxplot(
        list(per_group.values()),
        positions=range(len(groups)),
        widths=0.55,
        showfliers=False,
        boxprops={"linewidth": 1.3},
        medianprops={"color": "black", "linewidth": 1.8},
        whiskerprops={"linewidth": 1.3},
    )
    for index, (name, value) in enumerate(zip(names, references.values())):
        style = LINE_STYLES[1 + index % (len(LINE_STYLES) - 1)]
        ax.axhline(value, color="dimgray", linestyle=style, linewidth=1.3, label=name)
    ax.set_xticks(
        range(len(groups)), labels=groups, rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.set_xlabel("method")
    ax.set_ylabel(metric_label(column))
    ax.set_title(title)
    legend(ax)
    return fig, caption


def response_length_dist(data: PlotData):
    """Do methods drift to longer (or shorter) responses than the SFT model?"""
    return _distribution(
        data,
        "length_mean",
        "Response length per trial",
        "Mean response length (tokens) of every trial, per method, against the SFT model's (grey line): "
        "a method sitting well above the line has learned to win by writing longer answers.",
        data.sft_lengths,
    )


def kl_dist(data: PlotData):
    """How far from the SFT model do trained policies move?"""
    return _distribution(
        data,
        "kl_to_sft",
        "KL divergence to the SFT model per trial",
        "KL divergence of each trial's policy to the SFT model (nats per response: the exact next-token KL "
        "summed along policy samples; bars: ±1 standard error over prompts), per method: higher means the "
        "method moved further from its starting point.",
        {},
    )


def norm_kl_dist(data: PlotData):
    """How far from the SFT model do policies move once length is factored out?"""
    return _distribution(
        data,
        "kl_to_sft_per_token",
        "Per-token KL divergence to the SFT model per trial",
        "KL to the SFT model divided by response length (nats per token), per method: compare with the raw "
        "KL to tell real drift from drift that only comes from longer responses.",
        {},
    )


def kl_vs_score(data: PlotData):
    """Does a better objective cost more drift from the SFT model?"""
    if "kl_to_sft" not in data.trials.columns:
        return None
    both = data.trials["kl_to_sft"].notna() & data.trials["objective"].notna()
    if not both.any():
        return None
    groups = [g for g in data.groups if (both & (data.labels == g)).any()]
    fig, ax = figure(5.2, 3.6, [*groups, "method"])
    style = point_style(int(both.sum()))
    for group in groups:
        selected = both & (data.labels == group)
        scatter(
            ax,
            data.trials.loc[selected, "kl_to_sft"],
            data.trials.loc[selected, "objective"],
            color=data.color(group),
            label=group,
            **style,
        )
    kl = data.trials.loc[both, "kl_to_sft"]
    log_x_if_wide(ax, kl)
    if ax.get_xscale() == "log":
        plain_ticks(ax, kl, max_ticks=0)
    ax.set_xlabel(metric_label("kl_to_sft"))
    ax.set_ylabel(metric_label(data.objective.metric))
    ax.set_title("Objective against KL to the SFT model, one dot per trial")
    legend(ax, "method")
    caption = (
        f"Each trial's {data.objective.metric} against its KL to the SFT model: points up and to the left "
        "reach a good score while staying close to the SFT model; a method whose points spread to the right "
        "buys its score with drift."
    )
    return fig, caption


def _budgets(n: int) -> np.ndarray:
    """k = 1…n, thinned to about 100 log-spaced values for large n."""
    if n <= 100:
        return np.arange(1, n + 1)
    return np.unique(np.round(np.geomspace(1, n, 100)).astype(int))


def expected_best_of_k_figure(data: PlotData):
    """How good a model should I expect after trying k random settings?"""
    groups = [g for g in data.groups if data.scored[data.labels == g].notna().any()]
    if not groups:
        return None
    sizes = {g: int(data.scored[data.labels == g].notna().sum()) for g in groups}
    labels = [f"{g} (N = {sizes[g]})" for g in groups]
    fig, ax = figure(5.2, 3.6, [*labels, "method, trials", "held out"])
    complete = data.trials[(data.trials["state"] == "complete") & data.trials[HELD_OUT].notna()]
    held_groups = set(data.labels[complete.index])
    for group, label in zip(groups, labels):
        values = data.scored[data.labels == group].dropna().to_numpy()
        ks = _budgets(len(values))
        curve = expected_best_of_k(values, ks, data.objective.maximize)
        low, high = expected_best_band(values, ks, data.objective.maximize)
        ax.plot(
            ks,
            curve,
            marker="o" if len(ks) < 15 else None,
            markersize=3.5,
            color=data.color(group),
            label=label,
        )
        ax.fill_between(ks, low, high, color=data.color(group), alpha=0.18, linewidth=0)
        held = data.trials.loc[data.labels == group]
        held = held[(held["state"] == "complete") & held[SELECTED].notna() & held[HELD_OUT].notna()]
        if len(held):
            kept = np.arange(1, len(held) + 1)
            test = held_out_best_of_k(held[SELECTED], held[HELD_OUT], kept, data.objective.maximize)
            first = group == next(g for g in groups if g in held_groups)
            style = {"linestyle": "--", "linewidth": 1.2, "color": data.color(group)}
            ax.plot(kept, test, label="held out" if first else None, **style)
    largest = max(sizes.values())
    log_x_if_wide(ax, [1, largest])
    if ax.get_xscale() == "log":
        plain_ticks(
            ax,
            [k for k in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if k <= largest],
            max_ticks=13,
        )
    ax.set_xlabel("k, trials drawn at random without replacement")
    ax.set_ylabel(f"expected best: {metric_label(data.objective.metric)}")
    ax.set_title("Expected best of k random trials (band: 5–95% bootstrap)")
    legend(ax, "method, trials")
    caption = (
        f"Expected best {data.objective.metric} after trying k hyperparameter settings at random from the "
        "sweep (k = 1 is the mean trial, k = N the best one found; band: 5–95% bootstrap). Dashed: the "
        "held-out value, the test part's score of the trial the selection part picks among the k, free of "
        "the winner's curse. On a small budget, pick the method whose curve is highest at your k."
    )
    return fig, caption


def _numeric_swept(trials: pd.DataFrame) -> list[str]:
    """Numeric hyperparameter columns with at least two distinct values in `trials`."""
    swept = []
    for column in param_columns(trials):
        if column == "param.seed" or pd.api.types.is_bool_dtype(trials[column]):
            continue
        values = trials[column].dropna()
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all() and numbers.nunique() >= 2:
            swept.append(column)
    return swept


def _line_label(group: str, learning_rate: float, several_groups: bool) -> str:
    rate = "all trials" if np.isnan(learning_rate) else f"lr = {learning_rate:.3g}"
    return f"{group}, {rate}" if several_groups else rate


def _sensitivity(data: PlotData, method: str, column: str):
    trials = data.trials[data.trials["method"] == method]
    by_rate = column != LEARNING_RATE and LEARNING_RATE in trials.columns
    frame = pd.DataFrame(
        {
            "x": pd.to_numeric(trials[column], errors="coerce"),
            "y": data.scored[trials.index],
            "group": data.labels[trials.index],
            "lr": pd.to_numeric(trials[LEARNING_RATE], errors="coerce") if by_rate else np.nan,
        }
    ).dropna(subset=["x", "y"])
    if frame["x"].nunique() < 2:
        return None
    from matplotlib import colormaps

    lines = list(frame.groupby(["group", "lr"], dropna=False, sort=True))
    several_groups = frame["group"].nunique() > 1
    labels = [_line_label(group, lr, several_groups) for (group, lr), _ in lines]
    failed = frame[trials.loc[frame.index, "state"].isin(data.objective.penalized_states)]
    failed_label = "/".join(data.objective.penalized_states) + " (scored as worst)"
    fig, ax = figure(5.2, 3.6, [*labels, failed_label] if len(failed) else labels)
    rates = sorted(frame["lr"].dropna().unique())
    groups = sorted(frame["group"].unique())
    for ((group, lr), line), label in zip(lines, labels):
        stats = line.groupby("x")["y"].agg(["mean", "std", "min", "max"]).fillna({"std": 0.0})
        low = (stats["mean"] - stats["std"]).clip(lower=stats["min"])
        high = (stats["mean"] + stats["std"]).clip(upper=stats["max"])
        color = colormaps["viridis"](0.8 * rates.index(lr) / max(1, len(rates) - 1) if rates else 0.0)
        style = LINE_STYLES[groups.index(group) % len(LINE_STYLES)]
        ax.plot(
            stats.index, stats["mean"], marker="o", markersize=4, color=color, linestyle=style, label=label
        )
        ax.fill_between(stats.index, low, high, color=color, alpha=0.15, linewidth=0)
    if len(failed):
        ax.scatter(failed["x"], failed["y"], marker="x", color="crimson", s=30, zorder=3, label=failed_label)
    log_x_if_wide(ax, frame["x"])
    plain_ticks(ax, frame["x"])
    name = column.removeprefix("param.")
    ax.set_xlabel(param_label(column))
    ax.set_ylabel(metric_label(data.objective.metric))
    ax.set_title(f"{method}: sensitivity to {name}")
    legend(ax, "learning rate" if by_rate else None)
    lines_note = "one line per learning rate, " if by_rate else ""
    caption = (
        f"{method}'s {data.objective.metric} as {name} varies ({lines_note}mean over seeds and the other "
        "hyperparameters, band: ±1 standard deviation, red crosses: trials scored as the worst value): "
        f"a flat line means the method tolerates a poorly chosen {name}, a peaked one that {name} must be "
        "tuned."
    )
    return fig, caption


def sensitivity_figures(data: PlotData) -> Iterator[tuple[str, Callable]]:
    """One (name, builder) per method and numeric hyperparameter swept over at least two values."""
    for method in sorted(data.trials["method"].dropna().unique()):
        trials = data.trials[(data.trials["method"] == method) & data.scored.notna()]
        for column in _numeric_swept(trials):
            name = f"sensitivity_{slug(method)}_{slug(column.removeprefix('param.'))}"
            yield name, partial(_sensitivity, method=method, column=column)


def figure_builders(data: PlotData) -> list[tuple[str, Callable]]:
    """Every figure of the report, in display order, as (file stem, builder)."""
    return [
        ("performance_hist", performance_hist),
        ("expected_best_of_k", expected_best_of_k_figure),
        ("response_length_dist", response_length_dist),
        ("kl_dist", kl_dist),
        ("norm_kl_dist", norm_kl_dist),
        ("kl_vs_score", kl_vs_score),
        *sensitivity_figures(data),
        ("stage_times", stage_times),
    ]


def draw_figures(data: PlotData, out_dir: Path) -> list[FigureFile]:
    """Draw every figure that has data, write `<name>.png` and `<name>.svg` to out_dir, return them."""
    use_agg()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.png"), *out_dir.glob("*.svg")]:
        stale.unlink()
    drawn = (render(data, name, builder, out_dir) for name, builder in figure_builders(data))
    return [figure for figure in drawn if figure is not None]
