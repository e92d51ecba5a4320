"""Pure pandas: trials and histories (as `analysis.query` returns them) → what figures and
tables show. Nothing here touches MLflow, so every function is tested on hand-made frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from cifar_mlflow import schema
from cifar_mlflow.evidence import mean_interval

# Config fields that say how or where a run was made, not what was trained: left out of the
# configuration a report shows.
BOOKKEEPING_PARAMS = ("data_dir", "device", "seed")
FIXED_SETTING = "fixed configuration"
TABLE1_METRICS = (
    schema.METRIC_INFERENCE_TIME_S,
    schema.METRIC_TRAIN_EPOCH_TIME_S,
    schema.METRIC_TEST_ACC,
)
SUMMARY_METRICS = (schema.METRIC_BEST_VALID_ACC, schema.METRIC_TEST_ACC)


def parse_param(text: str) -> float | str:
    """A param as the user typed it ("1e-3", "0.001", "relu") → a value that groups correctly."""
    try:
        return float(text)
    except ValueError:
        return text


def _label_value(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else value


def _sort_key(values: tuple[float | str, ...]) -> tuple[tuple[int, float | str], ...]:
    # Numbers before words, so a field mixing both still sorts without a TypeError.
    return tuple((0, v) if isinstance(v, float) else (1, v) for v in values)


def with_settings(trials: pd.DataFrame, varied: Sequence[str]) -> pd.DataFrame:
    """Add `setting`: an ordered label of the varied fields' values, e.g. "lr = 0.001".

    Values are parsed before grouping, so "1e-3" and "0.001" are one setting. Seeds of a setting
    share its label. Without varied fields (a best_* study) all trials are one setting.
    """
    if not varied:
        return trials.assign(setting=pd.Categorical([FIXED_SETTING] * len(trials), ordered=True))
    keys = [
        tuple(parse_param(str(row[f"params.{name}"])) for name in varied)
        for _, row in trials.iterrows()
    ]
    label_of = {
        key: ", ".join(f"{name} = {_label_value(v)}" for name, v in zip(varied, key, strict=True))
        for key in sorted(set(keys), key=_sort_key)
    }
    labels = [label_of[key] for key in keys]
    return trials.assign(
        setting=pd.Categorical(labels, categories=list(label_of.values()), ordered=True)
    )


def _interval_bound(side: int) -> Callable[[pd.Series], float]:
    def bound(values: pd.Series) -> float:
        return mean_interval(values.dropna().to_numpy())[side]

    bound.__name__ = ("ci_low", "ci_high")[side]
    return bound


def curves(history: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per setting, metric and epoch: mean, min, max and 95 % interval (`ci_low`, `ci_high`;
    Student's t, NaN with one seed) over the setting's seeds.

    `history` is long (run_id, metric, step, timestamp, value); `trials` has `setting`. A value
    logged twice at one step (a resumed run) counts once, with its latest value.
    """
    latest = history.sort_values("timestamp").drop_duplicates(
        ["run_id", "metric", "step"], keep="last"
    )
    merged = latest.merge(trials[["run_id", "setting"]], on="run_id")
    grouped = merged.groupby(["setting", "metric", "step"], observed=True)["value"]
    stats = grouped.agg(["mean", "min", "max", _interval_bound(0), _interval_bound(1)])
    return stats.join(grouped.size().rename("seeds")).reset_index()


def seed_stats(trials: pd.DataFrame, by: str | list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation and 95 % interval of the mean over seeds, per value of `by`.

    Columns `{metric}_mean`, `{metric}_std`, `{metric}_ci_low`, `{metric}_ci_high` (Student's
    t; std and interval are NaN with one seed: a spread needs two) and `seeds`.
    """
    grouped = trials.groupby(by, observed=True, sort=True)
    columns = {
        f"{metric}_{name}": grouped[f"metrics.{metric}"].agg(stat)
        for metric in metrics
        for name, stat in (
            ("mean", "mean"),
            ("std", "std"),
            ("ci_low", _interval_bound(0)),
            ("ci_high", _interval_bound(1)),
        )
    }
    return pd.DataFrame({**columns, "seeds": grouped.size()}).reset_index()


def table1(trials: pd.DataFrame) -> pd.DataFrame:
    """Table 1 of the source report from the trials of a patch sweep, one row per patch size."""
    trials = trials.assign(
        patch_size=trials["params.patch_size"].map(parse_param).astype(int),
        num_params=trials[f"metrics.{schema.METRIC_NUM_PARAMS}"].astype("int64"),
    )
    stats = seed_stats(trials, "patch_size", TABLE1_METRICS)
    # The parameter count depends on the architecture only, so seeds of a size agree on it.
    params = trials.groupby("patch_size")[schema.METRIC_NUM_PARAMS].first()
    return stats.merge(params.reset_index(), on="patch_size")[
        ["patch_size", schema.METRIC_NUM_PARAMS, *stats.columns.drop("patch_size")]
    ]


def best_trial(trials: pd.DataFrame, best_run_id: str | None) -> pd.Series:
    """The sweep's own choice of best trial when it made one, else the best validation score."""
    chosen = trials[trials["run_id"] == best_run_id]
    if not chosen.empty:
        return chosen.iloc[0]
    return trials.loc[trials[f"metrics.{schema.METRIC_BEST_VALID_ACC}"].idxmax()]


def configuration(trial: pd.Series) -> dict[str, str]:
    """What was trained: the run's params without bookkeeping and without the options the run
    reported as having no effect (tag `unused_params`, comma-separated)."""
    unused = str(trial.get(f"tags.{schema.TAG_UNUSED_PARAMS}", "") or "").split(",")
    skipped = {*BOOKKEEPING_PARAMS, *(name.strip() for name in unused)}
    return {
        name.removeprefix("params."): str(value)
        for name, value in trial.items()
        if name.startswith("params.")
        and name.removeprefix("params.") not in skipped
        and pd.notna(value)
    }


def best_settings(trials: pd.DataFrame) -> pd.DataFrame:
    """Per model, the setting with the best mean validation accuracy over seeds.

    `trials` holds the trials of several studies with columns `study` and `setting`. The choice
    is made on validation accuracy only; the test accuracy is what the table then reports.
    """
    by = ["model", "study", "setting"]
    keyed = trials.assign(model=trials["params.model"], setting=trials["setting"].astype(str))
    run_ids = keyed.groupby(by)["run_id"].agg(list).rename("run_ids").reset_index()
    ranked = seed_stats(keyed, by, SUMMARY_METRICS).merge(run_ids, on=by)
    best = ranked.sort_values("best_valid_acc_mean", ascending=False).drop_duplicates("model")
    return best.sort_values("model").reset_index(drop=True)
