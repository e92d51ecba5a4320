"""Conclusions with their confidence (issue 24): sentences, claims and `analysis.compare`.

The sentence rules are checked on hand-made seed groups whose differences are chosen; the
command runs on fake sweeps logged to a real MLflow store.
"""

from __future__ import annotations

import io

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from analysis import compare, comparisons, conclusions, frames
from cifar_mlflow import schema
from tests import fake_runs
from tests.test_analysis_frames import make_trials

# Per activation: best_valid_acc of each seed, and the training pass per epoch.
CLEAR = {"relu": [0.700, 0.702, 0.698], "tanh": [0.600, 0.603, 0.597], "sigmoid": [0.5, 0.49, 0.51]}
NOISY = {"relu": [0.70, 0.66, 0.74], "tanh": [0.69, 0.73, 0.65]}


def comparison(accuracies: dict[str, list[float]], epoch_time: dict | None = None):
    rows = [
        {
            "activation": name,
            "metrics": {
                schema.METRIC_BEST_VALID_ACC: value,
                schema.METRIC_TEST_ACC: value - 0.01,
                schema.METRIC_TRAIN_EPOCH_TIME_S: (epoch_time or {}).get(name, 1.0) + 0.01 * seed,
            },
        }
        for name, values in accuracies.items()
        for seed, value in enumerate(values)
    ]
    trials = frames.with_settings(make_trials(rows), ["activation"])
    return comparisons.compare_settings(trials)


def test_a_clear_difference_is_a_conclusion_with_its_interval_and_holm_p():
    table = comparison(CLEAR)
    lines = conclusions.conclusions(table)
    assert lines[0].startswith("Best on validation accuracy: relu, 70.0 % (95 % CI")
    tanh = table.set_index("setting").loc["activation = tanh"]
    assert tanh["difference"] == pytest.approx(0.1)
    assert tanh["low"] < 0.1 < tanh["high"] and tanh["p_holm"] >= tanh["p_value"]
    assert (
        f"relu beats tanh by 10.0 points (95 % CI {tanh['low'] * 100:.1f} to "
        f"{tanh['high'] * 100:.1f}, Holm-corrected p = {tanh['p_holm']:.2g}, 3 seeds each)."
    ) in lines
    assert any(line.startswith("relu beats sigmoid by 20.0 points") for line in lines)
    assert conclusions.check_claims("activation", table)[0][1:] == (
        conclusions.HELD,
        f"it beats every other setting (largest Holm p = {table['p_holm'].max():.2g})",
    )


def test_a_difference_within_the_noise_cannot_be_told_apart():
    table = comparison(NOISY)
    lines = conclusions.conclusions(table)
    assert lines[1].startswith("relu and tanh cannot be told apart (+1.0 points, 95 % CI -")
    claim = conclusions.check_claims("activation", table)[0]
    assert claim[1:] == (
        conclusions.NOT_SHOWN,
        "it scored highest but cannot be told apart from tanh",
    )


def test_one_seed_says_what_it_cannot_conclude():
    table = comparison({name: values[:1] for name, values in CLEAR.items()})
    lines = conclusions.conclusions(table)
    assert "relu leads tanh by 10.0 points; not testable: 1 seed." in lines
    assert lines[-1].startswith("With 1 seed per setting this study cannot conclude")
    assert table["p_value"].isna().all() and table["low"].isna().all()
    assert conclusions.check_claims("activation", table)[0][1:] == (
        conclusions.NOT_SHOWN,
        "it scored highest; not testable: 1 seed",
    )


def test_a_trade_off_claim_holds_only_for_the_fastest_of_the_settings_as_good_as_the_best():
    accuracies = {"2": [0.80, 0.82, 0.78], "4": [0.79, 0.81, 0.80], "16": [0.6, 0.61, 0.59]}
    times = {"2": 4.0, "4": 2.0, "16": 0.5}
    rows = [
        {
            "patch_size": patch,
            "metrics": {
                schema.METRIC_BEST_VALID_ACC: value,
                schema.METRIC_TEST_ACC: value,
                schema.METRIC_TRAIN_EPOCH_TIME_S: times[patch],
            },
        }
        for patch, values in accuracies.items()
        for value in values
    ]
    trials = frames.with_settings(make_trials(rows), ["patch_size"])
    table = comparisons.compare_settings(trials)
    (held,) = conclusions.check_claims("patch", table)
    assert held[1:] == (conclusions.HELD, "as accurate as the best, and the fastest of those")
    # A patch 8 as accurate and faster than patch 4 takes the trade-off from it.
    faster = trials.assign(**{"params.patch_size": trials["params.patch_size"].replace("2", "8")})
    faster.loc[
        faster["params.patch_size"] == "8", f"metrics.{schema.METRIC_TRAIN_EPOCH_TIME_S}"
    ] = 1.0
    table = comparisons.compare_settings(frames.with_settings(faster, ["patch_size"]))
    (not_held,) = conclusions.check_claims("patch", table)
    assert not_held[1:] == (conclusions.NOT_SHOWN, "patch_size 8 is as accurate and trains faster")


@pytest.fixture
def logged(tracking_store: str) -> dict[str, fake_runs.FakeSweep]:
    client = MlflowClient()
    experiment_id = fake_runs.create_experiment(client, "cifar10")
    clock = fake_runs.Clock()
    return {
        "activation": fake_runs.log_sweep(client, experiment_id, "activation", clock, seeds=3),
        "patch": fake_runs.log_sweep(client, experiment_id, "patch", clock, seeds=1),
    }


def run_compare(*args: str) -> str:
    result = CliRunner().invoke(compare.main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_compare_command_prints_conclusions_that_match_its_numbers(logged):
    numbers = pd.read_csv(io.StringIO(run_compare("--study", "activation", "--format", "csv")))
    assert list(numbers["seeds"]) == [3, 3, 3]
    text = run_compare("--study", "activation")
    best = numbers.loc[numbers["setting"] == numbers["best"]].iloc[0]
    assert f"Best on validation accuracy: {conclusions.short(best['setting'])}" in text
    for row in numbers[numbers["setting"] != numbers["best"]].itertuples():
        interval = f"95 % CI {row.low * 100:.1f} to {row.high * 100:.1f}"
        assert interval in text and f"{row.p_holm:.2g}, 3 seeds each" in text
    assert "ReLU trains best: " in text
    markdown = run_compare("--study", "activation", "--format", "markdown")
    assert "## Study activation: conclusions" in markdown and "| best |" in markdown
    latex = run_compare("--study", "activation", "--format", "latex")
    assert r"\begin{itemize}" in latex and r"95 \% CI" in latex


def test_compare_command_on_a_one_seed_study_says_what_it_cannot_conclude(logged):
    text = run_compare("--study", "patch")
    assert text.count("not testable: 1 seed") >= 3
    assert "cannot conclude which setting is best" in text
    assert "patch 4 is the best trade-off" in text and "not shown (not testable: 1 seed)" in text
