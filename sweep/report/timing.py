"""Where the trials' time went, for the report: mean seconds per stage and group (metrics.json stages_s)."""

from __future__ import annotations

import pandas as pd

from sweep.report.canvas import PlotData, figure, legend
from sweep.spec.metrics import in_stage_order

STAGE_PREFIX = "stage_s."


def stage_columns(trials: pd.DataFrame) -> list[str]:
    """The trials' stage columns, in the order a trial meets its stages."""
    names = in_stage_order(c.removeprefix(STAGE_PREFIX) for c in trials.columns if c.startswith(STAGE_PREFIX))
    return [STAGE_PREFIX + name for name in names]


def stage_means(data: PlotData) -> pd.DataFrame:
    """Mean seconds per stage (columns, without the prefix) of each group's timed trials (rows)."""
    columns = stage_columns(data.trials)
    if not columns:
        return pd.DataFrame()
    timed = data.trials[columns].notna().any(axis=1)
    stages = data.trials.loc[timed, columns].fillna(0.0).astype(float)
    means = stages.groupby(data.labels[timed]).mean()
    means.columns = [c.removeprefix(STAGE_PREFIX) for c in columns]
    return means.loc[[g for g in data.groups if g in means.index]].rename_axis(None)


def stage_times(data: PlotData):
    """Where does a trial's time go, per method (build, train, generate, judge, KL, ...)?"""
    means = stage_means(data)
    if means.empty:
        return None
    from matplotlib import colormaps

    fig, ax = figure(5.6, 0.45 * len(means) + 0.8, list(means.columns), bottom=0.7)
    palette = colormaps["tab20"]
    left = pd.Series(0.0, index=means.index)
    for index, stage in enumerate(means.columns):
        ax.barh(list(means.index), means[stage], left=left, color=palette(index % palette.N), label=stage)
        left += means[stage]
    ax.invert_yaxis()
    ax.set_xlabel("mean seconds per trial")
    ax.set_title("Where a trial's time goes")
    legend(ax, "stage")
    caption = (
        "Mean wall seconds per trial of each stage, per method (metrics.json stages_s; the stages add up "
        "to the trial's time): a long build or generate bar is per-trial overhead, train the method's work."
    )
    return fig, caption
