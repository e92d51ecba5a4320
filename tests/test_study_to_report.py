"""From a real sweep to Table 1: on a SQLite store and on the PostgreSQL-backed team server."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from analysis import table1
from cifar_mlflow import schema
from cifar_mlflow.cli import main

pytestmark = pytest.mark.e2e


def run_patch_sweep(data_dir: Path, experiment: str) -> None:
    # Few images and one epoch: what is checked is the path from runs to table, not accuracy.
    arguments = ["sweep", "--study", "patch", "--dataset", "synthetic", "--epochs", "1"]
    arguments += ["--embed-dim", "64", "--num-blocks", "2"]
    arguments += ["--data-dir", str(data_dir), "--experiment", experiment]
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 0


def logged_trials(experiment: str) -> pd.DataFrame:
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    trials = client.search_runs([experiment_id], f"tags.{schema.TAG_ROLE} = '{schema.ROLE_TRIAL}'")
    return pd.DataFrame(
        {
            "patch_size": int(run.data.params["patch_size"]),
            **{name: run.data.metrics[name] for name in schema.FINAL_METRICS},
        }
        for run in trials
    ).set_index("patch_size")


def check_table1_matches_the_runs(experiment: str) -> None:
    runs = logged_trials(experiment)
    assert sorted(runs.index) == [2, 4, 8, 16]
    invoked = CliRunner().invoke(table1.main, ["--format", "csv", "--experiment", experiment])
    assert invoked.exit_code == 0, invoked.output
    table = pd.read_csv(io.StringIO(invoked.stdout)).set_index("patch_size").sort_index()
    assert list(table.index) == [2, 4, 8, 16]
    assert (
        table[schema.METRIC_NUM_PARAMS] == runs.loc[table.index, schema.METRIC_NUM_PARAMS]
    ).all()
    for metric in (
        schema.METRIC_INFERENCE_TIME_S,
        schema.METRIC_TRAIN_EPOCH_TIME_S,
        schema.METRIC_TEST_ACC,
    ):
        expected = runs.loc[table.index, metric].to_numpy()
        assert table[f"{metric}_mean"].to_numpy() == pytest.approx(expected, rel=1e-9)
    markdown = CliRunner().invoke(table1.main, ["--experiment", experiment]).stdout
    rows = [line for line in markdown.splitlines() if line.startswith("|")][2:]
    assert len(rows) == 4
    for row, params in zip(rows, runs.loc[table.index, schema.METRIC_NUM_PARAMS], strict=True):
        assert f"{int(params):,}" in row


def test_patch_sweep_then_table1_on_sqlite(tracking_store, small_synthetic_dir):
    run_patch_sweep(small_synthetic_dir, "cifar10")
    check_table1_matches_the_runs("cifar10")


def test_patch_sweep_then_table1_on_the_team_server(server_env, small_synthetic_dir):
    """Credentials come only from MLFLOW_TRACKING_USERNAME/PASSWORD in the environment."""
    assert server_env["MLFLOW_TRACKING_URI"].startswith("https://")
    assert server_env["MLFLOW_TRACKING_PASSWORD"]
    experiment = server_env["MLFLOW_EXPERIMENT_NAME"]
    run_patch_sweep(small_synthetic_dir, experiment)
    check_table1_matches_the_runs(experiment)
