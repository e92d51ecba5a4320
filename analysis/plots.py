"""Pure plotting: frames → matplotlib Figures. Nothing is saved or shown here, and no pyplot
state is used, so figures can be built in threads, tests and servers without a display.
"""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cifar_mlflow import schema

# The 2x2 panel of the curve figures (docs/analysis.md): (metric, axis label, scale from
# logged unit to shown unit).
PANELS = (
    (schema.METRIC_TRAIN_LOSS, "train loss", 1.0),
    (schema.METRIC_VALID_LOSS, "valid loss", 1.0),
    (schema.METRIC_TRAIN_ACC, "train accuracy (%)", 100.0),
    (schema.METRIC_VALID_ACC, "valid accuracy (%)", 100.0),
)
CURVE_METRICS = tuple(metric for metric, _, _ in PANELS)
BAND_ALPHA = 0.2
# Sharp enough on screen and in the report; rendering time grows with the pixel count.
PNG_DPI = 110


# The band around a setting's mean: its columns in `frames.curves` and how the legend names it.
BANDS = {"spread": ("min", "max", "min-max"), "ci": ("ci_low", "ci_high", "95 % CI of the mean")}


def curves_figure(curves: pd.DataFrame, title: str, interval: str = "spread") -> Figure:
    """Loss and accuracy against the epoch, one line per setting (`frames.curves` output).

    A setting with several seeds is drawn as its mean with a shaded band: by default min-max,
    which spans every seed's curve (a ±std band over two or three seeds would mean little);
    with `interval="ci"` the 95 % Student's t interval of the mean. The legend says which.
    """
    low, high, band_name = BANDS[interval]
    figure = Figure(figsize=(10, 7.5), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    settings = list(curves["setting"].cat.categories)
    for ax, (metric, label, scale) in zip(axes.flat, PANELS, strict=True):
        for setting, rows in curves[curves["metric"] == metric].groupby("setting", observed=True):
            # One colour per setting across the four panels, even where a panel lacks a setting.
            color = f"C{settings.index(setting) % 10}"
            ax.plot(rows["step"], rows["mean"] * scale, color=color, label=setting)
            if rows["seeds"].max() > 1:
                ax.fill_between(
                    rows["step"],
                    rows[low] * scale,
                    rows[high] * scale,
                    color=color,
                    alpha=BAND_ALPHA,
                    linewidth=0,
                )
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    most = int(curves["seeds"].max()) if not curves.empty else 0
    if most > 1:
        up_to = "" if curves["seeds"].nunique() == 1 else "up to "
        handles.append(Patch(color="grey", alpha=BAND_ALPHA))
        labels.append(f"line: mean, band: {band_name} over {up_to}{most} seeds")
    figure.legend(handles, labels, loc="outside lower center", ncols=max(1, min(len(labels), 3)))
    figure.suptitle(title)
    return figure


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


def compute_figure(progress: pd.DataFrame, trials: pd.DataFrame, title: str) -> Figure:
    """Validation accuracy against training seconds spent (`compute.progress` output): one
    line per run, one colour per setting, so a setting's accuracy reads against its cost."""
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    ax = figure.subplots()
    settings = list(trials["setting"].cat.categories)
    keyed = progress.merge(trials[["run_id", "setting"]], on="run_id")
    labelled: set[str] = set()
    for (setting, _), run in keyed.groupby(["setting", "run_id"], observed=True):
        label = None if setting in labelled else str(setting)
        labelled.add(setting)
        color = f"C{settings.index(setting) % 10}"
        ax.plot(
            run["seconds"], run[schema.METRIC_VALID_ACC] * 100, marker=".", color=color, label=label
        )
    ax.set_xlabel(f"training seconds spent (sum of {schema.METRIC_EPOCH_TIME_S})")
    ax.set_ylabel("valid accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.suptitle(title)
    return figure
