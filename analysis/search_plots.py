"""Pure plotting for a searched study: frames (`analysis.search_frames`) → matplotlib Figures.

Nothing is saved or shown, and no pyplot state is used, as in `analysis.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.search_frames import COMPLETE, STOPPED, best_so_far
from cifar_mlflow import schema

ACC_SCALE = 100.0  # fractions logged, percent shown
STOPPED_COLOR = "0.6"


def _trials_scatter(ax: Axes, x: pd.Series, search: pd.DataFrame) -> None:
    """Complete trials as dots, stopped ones as grey crosses (their best epoch before the stop)."""
    for outcome, style in (
        (COMPLETE, {"color": "C0", "marker": "o"}),
        (STOPPED, {"color": STOPPED_COLOR, "marker": "x"}),
    ):
        chosen = search["outcome"] == outcome
        if chosen.any():
            label = "complete" if outcome == COMPLETE else "stopped early"
            ax.scatter(
                x[chosen], search["objective"][chosen] * ACC_SCALE, label=label, zorder=3, **style
            )
    ax.set_ylabel("best valid accuracy (%)")
    ax.grid(alpha=0.3)


def best_so_far_figure(search: pd.DataFrame, title: str) -> Figure:
    """Each trial's objective by trial number, and the best complete trial so far."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    _trials_scatter(ax, search[schema.TAG_TRIAL_NUMBER], search)
    ax.step(
        search[schema.TAG_TRIAL_NUMBER],
        best_so_far(search) * ACC_SCALE,
        where="post",
        color="C3",
        label="best so far",
    )
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    figure.suptitle(title)
    return figure


def params_figure(
    search: pd.DataFrame, names: Sequence[str], kinds: Mapping[str, str], title: str
) -> Figure:
    """One panel per searched option: its value against the objective; log axis for log ranges.

    A choice's values are placed at equal distances, in the order of the study file's list
    as far as they sort (numbers before words).
    """
    figure = Figure(figsize=(4.2 * len(names), 4), layout="constrained")
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        values = search[name]
        if kinds.get(name) == "choice":
            levels = sorted(values.unique(), key=lambda v: (isinstance(v, str), v))
            position = {level: index for index, level in enumerate(levels)}
            _trials_scatter(ax, values.map(position), search)
            ax.set_xticks(range(len(levels)), [str(level) for level in levels])
        else:
            _trials_scatter(ax, values, search)
            if kinds.get(name) == "log_uniform":
                ax.set_xscale("log")
        ax.set_xlabel(name)
    axes[0].legend()
    figure.suptitle(title)
    return figure


def learning_curves_figure(valid_acc: pd.DataFrame, search: pd.DataFrame, title: str) -> Figure:
    """`valid_acc` by epoch of every trial; a stopped trial is grey, with a cross at its stop."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    latest = valid_acc.sort_values("timestamp").drop_duplicates(["run_id", "step"], keep="last")
    curves = dict(tuple(latest.sort_values("step").groupby("run_id")))
    for _, trial in search.iterrows():
        curve = curves.get(trial["run_id"])
        if curve is None:
            continue
        y = curve["value"] * ACC_SCALE
        if trial["outcome"] == STOPPED:
            ax.plot(curve["step"], y, color=STOPPED_COLOR, linewidth=1)
            ax.plot(curve["step"].iloc[-1], y.iloc[-1], "x", color=STOPPED_COLOR)
        else:
            ax.plot(
                curve["step"], y, linewidth=1.5, label=f"trial {trial[schema.TAG_TRIAL_NUMBER]}"
            )
    ax.plot([], [], "x-", color=STOPPED_COLOR, label="stopped early (x: last epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    figure.suptitle(title)
    return figure
