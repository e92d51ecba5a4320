"""The statistics against known truth (issue 24): simulated seed groups with a known difference.

A simulated sweep is logged once as runs in a real MLflow store and read back with the
analysis' own query, and the comparison of that frame must be what the logged values give;
the 1,000 repetitions then draw fresh seed values for the frame's groups (its settings and
seed counts) and test the statistics functions on them: a second each, not an MLflow round
trip per repetition. The intervals must cover the true difference in 93-97 % of repetitions (the
binomial spread of 1,000 draws at 95 % is 0.7 points), and under no difference the p-values
must be uniform.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats

from analysis import comparisons, frames
from analysis.query import Tracking
from cifar_mlflow import schema
from cifar_mlflow.evidence import holm, mean_interval, welch

REPETITIONS = 1_000
# Unequal seeds and spreads on purpose: a pooled-variance t-test would miss 93 % here.
GROUPS = {"relu": (0.62, 0.004, 3), "tanh": (0.60, 0.012, 5)}  # mean, seed-to-seed sd, seeds
TRUE_LEAD = GROUPS["relu"][0] - GROUPS["tanh"][0]


def log_simulated_sweep(client: MlflowClient, rng: np.random.Generator) -> str:
    """A finished `activation` sweep whose trials' accuracies are drawn from GROUPS."""
    experiment_id = client.create_experiment("simulated")
    parent = client.create_run(
        experiment_id,
        run_name="activation",
        tags={
            schema.TAG_STUDY: "activation",
            schema.TAG_ROLE: schema.ROLE_SWEEP,
            schema.TAG_VARIED: "activation",
        },
    ).info.run_id
    for activation, (mean, sd, seeds) in GROUPS.items():
        for seed in range(seeds):
            run_id = client.create_run(
                experiment_id,
                tags={schema.TAG_PARENT_RUN_ID: parent, schema.TAG_SEED: str(seed)},
            ).info.run_id
            values = {
                schema.METRIC_BEST_VALID_ACC: rng.normal(mean, sd),
                schema.METRIC_TEST_ACC: rng.normal(mean, sd),
            }
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, 0, 0) for k, v in values.items()],
                params=[Param("activation", activation), Param("seed", str(seed))],
            )
            client.set_terminated(run_id)
    client.set_terminated(parent)
    return parent


def redraw(trials: pd.DataFrame, rng: np.random.Generator, lead: float) -> dict[str, np.ndarray]:
    """The same runs with fresh seed values, relu's mean `lead` above tanh's: per group."""
    activation = trials["params.activation"].to_numpy()
    means = {"relu": GROUPS["tanh"][0] + lead, "tanh": GROUPS["tanh"][0]}
    return {
        name: rng.normal(means[name], GROUPS[name][1], (activation == name).sum())
        for name in GROUPS
    }


@pytest.fixture
def logged_trials(tracking_store: str) -> pd.DataFrame:
    parent = log_simulated_sweep(MlflowClient(), np.random.default_rng(7))
    tracking = Tracking()
    trials = tracking.trials(tracking.find_sweep("activation", parent_run_id=parent))
    return frames.with_settings(trials, ["activation"])


def tanh_row(table: pd.DataFrame) -> pd.Series:
    return table.set_index("setting").loc["activation = tanh"]


def test_the_store_round_trip_gives_what_the_logged_values_give(logged_trials):
    assert sorted(logged_trials.groupby("setting", observed=True).size()) == [3, 5]
    from_store = comparisons.compare_settings(logged_trials)
    by_hand = welch(
        logged_trials.loc[
            logged_trials["params.activation"] == "relu", f"metrics.{schema.METRIC_BEST_VALID_ACC}"
        ],
        logged_trials.loc[
            logged_trials["params.activation"] == "tanh", f"metrics.{schema.METRIC_BEST_VALID_ACC}"
        ],
    )
    row = tanh_row(from_store)
    assert (row["difference"], row["low"], row["high"], row["p_value"]) == pytest.approx(
        (by_hand.difference, by_hand.low, by_hand.high, by_hand.p_value)
    )
    assert row["best"] == "activation = relu" and row["seeds"] == 5


def test_intervals_cover_the_true_difference_95_percent_of_the_time(logged_trials):
    rng = np.random.default_rng(2024)
    covered = mean_covered = 0
    for _ in range(REPETITIONS):
        groups = redraw(logged_trials, rng, TRUE_LEAD)
        lead = welch(groups["relu"], groups["tanh"])
        covered += lead.low <= TRUE_LEAD <= lead.high
        low, high = mean_interval(groups["relu"])
        mean_covered += low <= GROUPS["relu"][0] <= high
    assert 0.93 <= covered / REPETITIONS <= 0.97
    assert 0.93 <= mean_covered / REPETITIONS <= 0.97


def test_p_values_are_uniform_without_a_difference(logged_trials):
    rng = np.random.default_rng(99)
    p_values = []
    for _ in range(REPETITIONS):
        groups = redraw(logged_trials, rng, 0.0)
        p_values.append(welch(groups["relu"], groups["tanh"]).p_value)
    assert stats.kstest(p_values, "uniform").pvalue > 0.001
    # About 5 % false alarms at the 5 % level (binomial 3 sd: 2.9-7.1 %).
    assert 29 <= sum(p < 0.05 for p in p_values) <= 71


def test_one_seed_gives_no_interval_and_no_test():
    assert all(np.isnan(mean_interval([0.5])))
    difference = welch([0.6], [0.5, 0.52])
    assert not difference.testable and difference.untestable_reason == "not testable: 1 seed"
    assert difference.difference == pytest.approx(0.09)
    assert welch([0.5, 0.5], [0.4, 0.4]).untestable_reason == (
        "not testable: no spread between seeds"
    )


def test_holm_adjusts_step_down_and_skips_untested():
    # Sorted 0.01, 0.02, 0.04 times 3, 2, 1 → 0.03, 0.04, 0.04 (kept monotone).
    adjusted = holm([0.04, np.nan, 0.01, 0.02])
    assert adjusted == pytest.approx([0.04, np.nan, 0.03, 0.04], nan_ok=True)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_seed_group_is_the_trial_key_without_the_seed():
    from cifar_mlflow.config import TrainConfig

    seeds = [TrainConfig(model="mlp", seed=seed) for seed in (42, 43)]
    assert seeds[0].trial_key() != seeds[1].trial_key()
    assert seeds[0].seed_group() == seeds[1].seed_group()
    assert TrainConfig(model="mlp", lr=0.01).seed_group() != seeds[0].seed_group()
