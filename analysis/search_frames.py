"""Pure pandas for a searched study: trials and `valid_acc` histories → what its figures and
table show. Nothing here touches MLflow; every function is tested on hand-made frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import yaml

from analysis.frames import parse_param
from cifar_mlflow import schema

COMPLETE = "complete"
STOPPED = "stopped"
SEARCH_COLUMNS = [
    "run_id",
    "run_name",
    schema.TAG_TRIAL_NUMBER,
    "outcome",
    schema.TAG_STOPPED_AT_EPOCH,
    schema.TAG_STOPPED_REASON,
    "objective",
]


def searched_kinds(study_text: str) -> dict[str, str]:
    """Each searched option's distribution (`log_uniform`, `choice`...) from the study file."""
    search = (yaml.safe_load(study_text) or {}).get("search") or {}
    return {name: next(iter(spec)) for name, spec in search.items() if isinstance(spec, dict)}


def search_trials(
    trials: pd.DataFrame, valid_acc: pd.DataFrame, names: Sequence[str]
) -> pd.DataFrame:
    """One row per trial, by trial number: how it ended, its objective, its searched values.

    `trials` as `analysis.query` returns them; `valid_acc` is the long history frame of the
    `valid_acc` metric. The objective is the best `valid_acc` the trial reached: its
    `best_valid_acc` when complete, the best of its epochs when stopped early.
    """
    best = valid_acc.groupby("run_id")["value"].max()
    stop_tag = f"tags.{schema.TAG_STOPPED_AT_EPOCH}"
    stopped = trials[stop_tag] if stop_tag in trials else pd.Series(pd.NA, index=trials.index)
    reason_tag = f"tags.{schema.TAG_STOPPED_REASON}"  # absent on trials stopped before issue 23
    reasons = trials[reason_tag] if reason_tag in trials else pd.Series(pd.NA, index=trials.index)
    frame = pd.DataFrame(
        {
            "run_id": trials["run_id"],
            "run_name": trials["run_name"],
            schema.TAG_TRIAL_NUMBER: trials[f"tags.{schema.TAG_TRIAL_NUMBER}"].astype(int),
            "outcome": [STOPPED if pd.notna(s) else COMPLETE for s in stopped],
            schema.TAG_STOPPED_AT_EPOCH: pd.to_numeric(stopped, errors="coerce").astype("Int64"),
            schema.TAG_STOPPED_REASON: reasons,
            "objective": trials["run_id"].map(best),
            schema.METRIC_TEST_ACC: trials.get(
                f"metrics.{schema.METRIC_TEST_ACC}", pd.Series(float("nan"), trials.index)
            ),
        }
    )
    for name in names:
        frame[name] = trials[f"params.{name}"].map(parse_param)
    return frame.sort_values(schema.TAG_TRIAL_NUMBER).reset_index(drop=True)


def best_so_far(search: pd.DataFrame) -> pd.Series:
    """After each trial, the best objective of the complete trials so far (NaN before any)."""
    complete = search["objective"].where(search["outcome"] == COMPLETE)
    return complete.cummax().ffill()  # cummax leaves NaN where a trial was stopped


def stopped_lines(search: pd.DataFrame) -> list[str]:
    """One line per stopped trial: its number, run, epoch and the pruner's reason."""
    lines = []
    for trial in search[search["outcome"] == STOPPED].itertuples():
        line = f"Trial {trial.trial_number} ({trial.run_name}) stopped at epoch "
        line += str(trial.stopped_at_epoch)
        if pd.notna(trial.stopped_reason):
            line += f": {trial.stopped_reason}"
        lines.append(line)
    return lines


def top_trials(search: pd.DataFrame, names: Sequence[str], count: int = 10) -> pd.DataFrame:
    """The best complete trials by objective (never by test accuracy), best first."""
    complete = search[search["outcome"] == COMPLETE]
    ranked = complete.sort_values("objective", ascending=False).head(count)
    return ranked[
        [schema.TAG_TRIAL_NUMBER, *names, "objective", schema.METRIC_TEST_ACC]
    ].reset_index(drop=True)


def value_format(values: pd.Series) -> str:
    """How a searched option's values are shown: words as they are, numbers to four digits."""
    return "" if values.map(lambda value: isinstance(value, str)).any() else ".4g"
