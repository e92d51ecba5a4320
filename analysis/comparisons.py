"""Pure: a study's trials (with `setting`) → every setting against the best one, with evidence.

The best setting is the one with the highest mean `best_valid_acc` over its seeds (the
study's objective); the test accuracy is compared too, and reported, never used to choose.
Each other setting gets the best one's lead (best minus setting) on both metrics with Welch's
95 % interval and p-value (`cifar_mlflow.evidence`), and on the objective a Holm-corrected
p-value over the study's comparisons. See docs/statistics.md.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.frames import seed_stats
from cifar_mlflow import schema
from cifar_mlflow.evidence import ALPHA, holm, welch

OBJECTIVE = schema.METRIC_BEST_VALID_ACC
REPORTED = schema.METRIC_TEST_ACC
METRICS = (OBJECTIVE, REPORTED)
# The compute a setting costs: its median training pass per epoch, for trade-off claims.
SPEED_METRIC = schema.METRIC_TRAIN_EPOCH_TIME_S


def _values(trials: pd.DataFrame, setting: str, metric: str) -> list[float]:
    rows = trials[trials["setting"].astype(str) == setting]
    return rows[f"metrics.{metric}"].dropna().tolist()


def _lead_columns(trials: pd.DataFrame, best: str, setting: str) -> dict[str, object]:
    """The best setting's lead over `setting` on each metric (NaN for the best itself)."""
    columns: dict[str, object] = {"note": ""}
    for metric in METRICS:
        prefix = "" if metric == OBJECTIVE else f"{metric}_"
        if setting == best:
            found = dict.fromkeys(("difference", "low", "high", "p_value"), math.nan)
        else:
            lead = welch(_values(trials, best, metric), _values(trials, setting, metric))
            found = {
                "difference": lead.difference,
                "low": lead.low,
                "high": lead.high,
                "p_value": lead.p_value,
            }
            if metric == OBJECTIVE and not lead.testable:
                columns["note"] = lead.untestable_reason
        columns |= {f"{prefix}{name}": value for name, value in found.items()}
    return columns


def compare_settings(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: seed statistics, the best setting's lead, interval and p-values.

    Columns: `setting`, `seeds`, `{metric}_{mean,std,ci_low,ci_high}` for the objective, test
    accuracy and training time; `best` (the reference setting), `difference`, `low`, `high`,
    `p_value`, `p_holm`, `significant` on the objective; `test_acc_difference`, `_low`,
    `_high`, `_p_value`; `note` ("not testable: 1 seed" where no test could be made).
    """
    metrics = [m for m in (*METRICS, SPEED_METRIC) if f"metrics.{m}" in trials.columns]
    keyed = trials.assign(setting=trials["setting"].astype(str))
    stats = seed_stats(keyed, "setting", metrics)
    best = str(stats.loc[stats[f"{OBJECTIVE}_mean"].idxmax(), "setting"])
    leads = pd.DataFrame([_lead_columns(keyed, best, setting) for setting in stats["setting"]])
    table = pd.concat([stats, leads], axis=1).assign(best=best)
    table["p_holm"] = holm(table["p_value"].tolist())
    table["significant"] = table["p_holm"] < ALPHA
    if isinstance(trials["setting"].dtype, pd.CategoricalDtype):
        order = [str(c) for c in trials["setting"].cat.categories]
        table = table.set_index("setting").reindex([s for s in order if s in set(table["setting"])])
        table = table.reset_index()
    return table
