"""Time to accuracy and compute spent, from the runs' per-epoch histories (pure pandas).

Every run logs, per epoch, `valid_acc` and `epoch_time_s` (its training pass, device-
synchronised), and at its end `train_time_s`, the sum of those passes. The thresholds are
study-wide, fractions of the best `valid_acc` any run of the analysed sweep reached, so they
are known only once the sweep is over, and a trial that a later sweep reuses meets another
best. They are therefore derived here, per analysed sweep, from the histories, never stored
on a run where they would go stale (docs/statistics.md). Seconds are training seconds: the
evaluation passes and the data loading between epochs are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from cifar_mlflow import schema

FRACTIONS = (0.5, 0.7, 0.9)  # of the study's best valid_acc
HISTORY_METRICS = (schema.METRIC_VALID_ACC, schema.METRIC_EPOCH_TIME_S)


def progress(history: pd.DataFrame) -> pd.DataFrame:
    """Per run and epoch: `valid_acc`, `epoch_time_s` and `seconds`, the training seconds
    spent up to the end of that epoch. A value logged twice at one step counts once (latest)."""
    latest = history.sort_values("timestamp").drop_duplicates(
        ["run_id", "metric", "step"], keep="last"
    )
    wide = latest.pivot_table(index=["run_id", "step"], columns="metric", values="value")
    wide = wide.reindex(columns=list(HISTORY_METRICS)).reset_index().sort_values(["run_id", "step"])
    wide["seconds"] = wide.groupby("run_id")[schema.METRIC_EPOCH_TIME_S].cumsum()
    return wide.rename_axis(columns=None).reset_index(drop=True)


def threshold_name(fraction: float) -> str:
    return f"{round(fraction * 100)}"


def time_to_accuracy(runs: pd.DataFrame, fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """Per run: epochs run, `train_time_s`, its best `valid_acc`, and for each fraction f of
    the best any of `runs` reached, `epoch_to_{f}` and `seconds_to_{f}` when its `valid_acc`
    first reached it (NaN when it never did)."""
    best = runs[schema.METRIC_VALID_ACC].max()
    rows = []
    for run_id, run in runs.groupby("run_id", sort=False):
        row = {
            "run_id": run_id,
            "epochs": int(run["step"].max()),
            schema.METRIC_TRAIN_TIME_S: run[schema.METRIC_EPOCH_TIME_S].sum(),
            schema.METRIC_BEST_VALID_ACC: run[schema.METRIC_VALID_ACC].max(),
        }
        for fraction in fractions:
            reached = run[run[schema.METRIC_VALID_ACC] >= fraction * best]
            first = reached.iloc[0] if not reached.empty else None
            name = threshold_name(fraction)
            row[f"epoch_to_{name}"] = first["step"] if first is not None else float("nan")
            row[f"seconds_to_{name}"] = first["seconds"] if first is not None else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def per_setting(times: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Means over each setting's seeds of `time_to_accuracy` (a threshold's mean over the
    seeds that reached it, with `reached_{f}` counting them)."""
    keyed = times.merge(trials[["run_id", "setting"]], on="run_id")
    grouped = keyed.groupby("setting", observed=True)
    table = grouped[[schema.METRIC_TRAIN_TIME_S, schema.METRIC_BEST_VALID_ACC]].mean()
    for column in [c for c in times.columns if c.startswith("seconds_to_")]:
        table[column] = grouped[column].mean()
        table[column.replace("seconds_to_", "reached_")] = grouped[column].count()
    return table.join(grouped.size().rename("seeds")).reset_index()


@dataclass(frozen=True)
class Savings:
    """A search's training seconds, and what running every trial to its last epoch costs."""

    spent_s: float
    full_s: float  # a stopped trial's missing epochs at its own mean epoch time
    stopped: int

    @property
    def saved_s(self) -> float:
        return self.full_s - self.spent_s

    def describe(self) -> str:
        share = self.saved_s / self.full_s if self.full_s else 0.0
        return (
            f"Training took {self.spent_s:,.0f} s; running all {self.stopped} stopped trials to "
            f"their last epoch would have taken about {self.full_s:,.0f} s, so early stopping "
            f"saved about {self.saved_s:,.0f} s ({share:.0%}), estimated from each stopped "
            "trial's own mean epoch time."
        )


def early_stopping_savings(times: pd.DataFrame, trials: pd.DataFrame) -> Savings:
    """`times` from `time_to_accuracy`; `trials` with `params.epochs` (the epochs planned)."""
    planned = trials.set_index("run_id")["params.epochs"].astype(int)
    keyed = times.assign(planned=times["run_id"].map(planned))
    missing = (keyed["planned"] - keyed["epochs"]).clip(lower=0)
    full = (
        keyed[schema.METRIC_TRAIN_TIME_S]
        + missing * keyed[schema.METRIC_TRAIN_TIME_S] / keyed["epochs"]
    )
    return Savings(
        float(keyed[schema.METRIC_TRAIN_TIME_S].sum()), float(full.sum()), int((missing > 0).sum())
    )
