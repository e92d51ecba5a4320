"""Time to accuracy and compute spent (issue 24): hand-made histories with known answers, and
the report's evidence sections on fake sweeps in a real MLflow store."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from analysis import compute, report
from analysis.query import Tracking
from cifar_mlflow import schema
from tests import fake_runs

# Per run and epoch: (valid_acc, epoch_time_s). The study's best is 0.8, so the thresholds
# are 0.4, 0.56 and 0.72.
RUNS = {
    "a": [(0.2, 10.0), (0.5, 10.0), (0.8, 10.0)],
    "b": [(0.4, 5.0), (0.6, 5.0), (0.7, 5.0)],
}


def history() -> pd.DataFrame:
    rows = [
        (run_id, metric, epoch, 1000 * epoch, value)
        for run_id, epochs in RUNS.items()
        for epoch, values in enumerate(epochs, start=1)
        for metric, value in zip(compute.HISTORY_METRICS, values, strict=True)
    ]
    # A resumed run logs an epoch twice: the latest value counts, once.
    rows.append(("a", schema.METRIC_EPOCH_TIME_S, 1, 1, 99.0))
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "timestamp", "value"])


def test_time_to_accuracy_is_the_first_epoch_at_each_fraction_of_the_study_best():
    times = compute.time_to_accuracy(compute.progress(history())).set_index("run_id")
    a, b = times.loc["a"], times.loc["b"]
    assert (a["epochs"], a[schema.METRIC_TRAIN_TIME_S], a[schema.METRIC_BEST_VALID_ACC]) == (
        3,
        30.0,
        0.8,
    )
    assert (a["epoch_to_50"], a["seconds_to_50"]) == (2, 20.0)
    assert (a["epoch_to_70"], a["seconds_to_70"], a["seconds_to_90"]) == (3, 30.0, 30.0)
    assert (b["seconds_to_50"], b["epoch_to_70"], b["seconds_to_70"]) == (5.0, 2, 10.0)
    assert math.isnan(b["epoch_to_90"]) and math.isnan(b["seconds_to_90"])  # 0.7 < 0.72


def test_per_setting_means_count_only_the_seeds_that_reached_a_threshold():
    times = compute.time_to_accuracy(compute.progress(history()))
    trials = pd.DataFrame({"run_id": ["a", "b"], "setting": pd.Categorical(["s", "s"])})
    (row,) = compute.per_setting(times, trials).to_dict("records")
    assert row["seeds"] == 2 and row[schema.METRIC_TRAIN_TIME_S] == 22.5
    assert (row["seconds_to_90"], row["reached_90"]) == (30.0, 1)
    assert (row["seconds_to_50"], row["reached_50"]) == (12.5, 2)


def test_early_stopping_savings_price_each_missing_epoch_at_the_trials_own_mean():
    times = compute.time_to_accuracy(compute.progress(history()))
    trials = pd.DataFrame({"run_id": ["a", "b"], "params.epochs": ["5", "3"]})
    savings = compute.early_stopping_savings(times, trials)
    # a stopped after 3 of 5 epochs of 10 s: 20 s saved; b ran all its epochs.
    assert (savings.spent_s, savings.full_s, savings.saved_s, savings.stopped) == (45, 65, 20, 1)
    assert "saved about 20 s (31%)" in savings.describe()


@pytest.fixture
def logged(tracking_store: str) -> None:
    client = MlflowClient()
    experiment_id = fake_runs.create_experiment(client, "cifar10")
    clock = fake_runs.Clock()
    fake_runs.log_sweep(client, experiment_id, "activation", clock, seeds=3)
    fake_runs.log_sweep(client, experiment_id, "patch", clock, seeds=1)


def test_every_run_records_its_training_seconds_as_its_history_sums_them(logged):
    tracking = Tracking()
    trials = tracking.trials(tracking.find_sweep("activation"))
    times = compute.time_to_accuracy(report.trial_progress(tracking, trials))
    recorded = trials.set_index("run_id")[f"metrics.{schema.METRIC_TRAIN_TIME_S}"]
    assert times.set_index("run_id")[schema.METRIC_TRAIN_TIME_S].to_dict() == pytest.approx(
        recorded.to_dict()
    )


def test_the_report_shows_conclusions_claims_and_compute_per_study(logged, tmp_path):
    tracking = Tracking()
    html = report.render_report(
        report.collect(tracking, interval="ci"), tracking.tracking_uri, pd.Timestamp.now()
    )
    assert html.count("<h3>Conclusions</h3>") == 2
    assert html.count("<h3>Accuracy against compute</h3>") == 2
    assert "<td>ReLU trains best</td>" in html and "3 seeds each" in html
    assert "patch 4 is the best trade-off" in html and "not testable: 1 seed" in html
    assert "cannot conclude which setting is best" in html
    assert "Seconds to 90 % of best" in html and "mean [95 % CI]" in html


def log_search(client: MlflowClient, experiment_id: str) -> None:
    """A finished search of 3-epoch trials: trial 1 complete, trial 2 stopped after epoch 1."""
    parent = client.create_run(
        experiment_id,
        run_name="tiny_search",
        tags={
            schema.TAG_STUDY: "tiny_search",
            schema.TAG_ROLE: schema.ROLE_SWEEP,
            schema.TAG_VARIED: "lr",
            schema.TAG_SEARCH_KEY: "k",
        },
    ).info.run_id
    for number, (lr, accuracies) in enumerate([("0.01", [0.5, 0.6, 0.7]), ("0.1", [0.2])], 1):
        tags = {schema.TAG_PARENT_RUN_ID: parent, schema.TAG_TRIAL_NUMBER: str(number)}
        if len(accuracies) < 3:
            tags[schema.TAG_STOPPED_AT_EPOCH] = str(len(accuracies))
        run_id = client.create_run(experiment_id, run_name=f"t{number}", tags=tags).info.run_id
        history = [
            Metric(name, value, 0, epoch)
            for epoch, accuracy in enumerate(accuracies, 1)
            for name, value in (
                (schema.METRIC_VALID_ACC, accuracy),
                (schema.METRIC_EPOCH_TIME_S, 10.0),
            )
        ]
        client.log_batch(run_id, metrics=history, params=[Param("lr", lr), Param("epochs", "3")])
        client.set_terminated(run_id)
    client.set_terminated(parent)


def test_the_report_shows_what_a_searchs_early_stopping_saved(tracking_store):
    client = MlflowClient()
    log_search(client, fake_runs.create_experiment(client, "cifar10"))
    tracking = Tracking()
    (search,) = report.collect_searches(tracking)
    html = report.render_report([], tracking.tracking_uri, pd.Timestamp.now(), searches=[search])
    # 3 + 1 epochs of 10 s ran; trial 2's two missing epochs would have cost 20 s more.
    assert (
        "Training took 40 s; running all 1 stopped trials to their last epoch would have taken "
        "about 60 s, so early stopping saved about 20 s (33%)"
    ) in html
