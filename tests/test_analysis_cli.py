"""The analysis commands end to end on a temporary SQLite store filled by `tests.fake_runs`."""

from __future__ import annotations

import io
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgba
from mlflow import MlflowClient

from analysis import figures, report, table1
from analysis.plots import PANELS
from analysis.query import Tracking
from cifar_mlflow import schema
from cifar_mlflow.studies import load_study
from tests import fake_runs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(tracking_store: str) -> MlflowClient:
    return MlflowClient(tracking_store)


@pytest.fixture
def experiment_id(client: MlflowClient) -> str:
    return fake_runs.create_experiment(client, "cifar10")


@pytest.fixture
def clock() -> fake_runs.Clock:
    return fake_runs.Clock()


def invoke(command, *args: str):
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def logged(client: MlflowClient, run_ids) -> pd.DataFrame:
    """Params and metrics as logged, one row per run."""
    runs = [client.get_run(run_id).data for run_id in run_ids]
    return pd.DataFrame([{**run.params, **run.metrics} for run in runs])


@pytest.mark.parametrize("command", [figures.main, table1.main, report.main])
def test_help(command):
    for flag in ("-h", "--help"):
        result = invoke(command, flag)
        assert result.exit_code == 0 and "--experiment" in result.output


def test_table1_prints_the_logged_parameters_and_times_of_the_patch_sweep(
    client, experiment_id, clock, tmp_path
):
    sweep = fake_runs.log_sweep(client, experiment_id, "patch", clock, epochs=2)
    runs = logged(client, sweep.trials.values())
    runs = runs.assign(patch_size=runs["patch_size"].astype(int)).sort_values("patch_size")
    # As a user runs it: `python -m analysis.table1` in a fresh process.
    result = subprocess.run(
        [sys.executable, "-m", "analysis.table1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    rows = [line.strip("|").split("|") for line in result.stdout.splitlines()[2:]]
    assert len(rows) == 4
    for cells, (_, run) in zip(rows, runs.iterrows(), strict=True):
        patch, params, inference, train, accuracy, seeds = (cell.strip() for cell in cells)
        assert int(patch) == run["patch_size"]
        assert params == f"{int(run[schema.METRIC_NUM_PARAMS]):,d}"
        assert inference == f"{run[schema.METRIC_INFERENCE_TIME_S] * 1000:.1f}"
        assert train == f"{run[schema.METRIC_TRAIN_EPOCH_TIME_S]:.2f}"
        assert accuracy == f"{run[schema.METRIC_TEST_ACC] * 100:.2f}" and seeds == "1"

    csv = pd.read_csv(io.StringIO(invoke(table1.main, "--format", "csv").stdout))
    assert list(csv["patch_size"]) == list(runs["patch_size"])
    assert list(csv[schema.METRIC_NUM_PARAMS]) == list(runs[schema.METRIC_NUM_PARAMS])
    for metric in (
        schema.METRIC_INFERENCE_TIME_S,
        schema.METRIC_TRAIN_EPOCH_TIME_S,
        schema.METRIC_TEST_ACC,
    ):
        assert list(csv[f"{metric}_mean"]) == list(runs[metric])  # exact, not rounded
        assert csv[f"{metric}_std"].isna().all()


def test_table1_with_two_seeds_shows_mean_plus_minus_std(client, experiment_id, clock, tmp_path):
    fake_runs.log_sweep(client, experiment_id, "patch", clock, seeds=2, epochs=2)
    out = tmp_path / "t.tex"
    assert invoke(table1.main, "--format", "latex", "--output", str(out)).exit_code == 0
    assert out.read_text().count(r"$\pm$") == 4 * 3
    rows = invoke(table1.main).stdout.splitlines()[2:]
    assert len(rows) == 4 and all(row.count("±") == 3 and row.endswith("| 2 |") for row in rows)


def test_figures_of_the_lr_study_one_line_per_learning_rate_logged_to_the_parent(
    client, experiment_id, clock, tmp_path
):
    sweep = fake_runs.log_sweep(client, experiment_id, "lr", clock, epochs=3)
    result = invoke(figures.main, "--study", "lr", "--output-dir", str(tmp_path / "out"))
    png = tmp_path / "out" / "lr_curves.png"
    assert result.stdout.split() == [str(png), str(tmp_path / "out" / "lr_curves.pdf")]

    built = figures.study_figures(Tracking(), Tracking().find_sweep("lr"))
    learning_rates = {f"lr = {float(lr):g}" for lr in load_study("lr").grid["lr"]}
    assert len(learning_rates) == 5
    for ax in built.curves.get_axes():
        labels = [line.get_label() for line in ax.get_lines()]
        assert sorted(labels) == sorted(learning_rates)
        assert not ax.collections  # one seed: no band

    artifact = Path(
        client.download_artifacts(sweep.parent_run_id, "figures/lr_curves.png", tmp_path)
    )
    assert artifact.read_bytes() == png.read_bytes()


def band_limits(band) -> dict[float, tuple[float, float]]:
    """Lower and upper edge of a `fill_between` band at each x it spans."""
    edges: dict[float, list[float]] = {}
    for x, y in band.get_paths()[0].vertices:
        edges.setdefault(float(x), []).append(float(y))
    return {x: (min(ys), max(ys)) for x, ys in edges.items()}


def test_figures_with_two_seeds_draw_each_settings_mean_and_min_max_band(
    client, experiment_id, clock, tmp_path
):
    sweep = fake_runs.log_sweep(client, experiment_id, "activation", clock, seeds=2, epochs=3)
    built, _ = figures.write_study_figures("activation", tmp_path)
    seeds_of: dict[str, list[str]] = {}
    for run_id in sweep.trials.values():
        activation = client.get_run(run_id).data.params["activation"]
        seeds_of.setdefault(f"activation = {activation}", []).append(run_id)
    assert sorted(len(runs) for runs in seeds_of.values()) == [2, 2, 2]
    for ax, (metric, _, scale) in zip(built.curves.get_axes(), PANELS, strict=True):
        lines, bands = ax.get_lines(), ax.collections
        assert len(lines) == len(bands) == 3
        for line, band in zip(lines, bands, strict=True):
            assert to_rgba(line.get_color()) == to_rgba(band.get_facecolor()[0], alpha=1)
            per_seed = [
                {m.step: m.value * scale for m in client.get_metric_history(run_id, metric)}
                for run_id in seeds_of[line.get_label()]
            ]
            steps = sorted(per_seed[0])
            assert steps == [1, 2, 3] and list(line.get_xdata()) == steps
            values = [[seed[step] for seed in per_seed] for step in steps]
            assert list(line.get_ydata()) == pytest.approx([statistics.mean(v) for v in values])
            limits = band_limits(band)
            assert [limits[step][0] for step in steps] == pytest.approx([min(v) for v in values])
            assert [limits[step][1] for step in steps] == pytest.approx([max(v) for v in values])


def test_best_study_figures_are_the_best_runs_curves_and_weights(
    client, experiment_id, clock, tmp_path
):
    sweep = fake_runs.log_sweep(client, experiment_id, "best_mixer", clock, seeds=2, epochs=3)
    best_run_id = client.get_run(sweep.parent_run_id).data.tags[schema.TAG_BEST_RUN_ID]
    result = invoke(figures.main, "-s", "best_mixer", "-o", str(tmp_path))
    assert (tmp_path / "best_mixer_weights.png").read_bytes() == Path(
        client.download_artifacts(best_run_id, schema.WEIGHTS_FIGURE_ARTIFACT, tmp_path / "dl")
    ).read_bytes()
    assert "best_mixer_weights.png" in result.stdout
    built = figures.study_figures(Tracking(), Tracking().sweep_by_id(sweep.parent_run_id))
    for ax in built.curves.get_axes():
        assert [line.get_label() for line in ax.get_lines()] == [
            client.get_run(best_run_id).info.run_name
        ]


def test_latest_finished_sweep_by_default_and_parent_run_id_for_another(
    client, experiment_id, clock, tmp_path
):
    # A sweep with a crashed trial ends FAILED; re-running it reuses what finished.
    failed = fake_runs.log_sweep(client, experiment_id, "lr", clock, failed_trials=1)
    rerun = fake_runs.log_sweep(client, experiment_id, "lr", clock, seeds=2, reuse=failed.trials)
    fake_runs.log_sweep(client, experiment_id, "lr", clock, running=True)
    tracking = Tracking()
    latest = tracking.find_sweep("lr")
    assert latest.run_id == rerun.parent_run_id
    trials = tracking.trials(latest)
    # Its finished children plus the runs it reused from the failed sweep.
    assert len(rerun.reused) == 4 and set(trials["run_id"]) == set(rerun.trials.values())
    assert len(trials) == 5 * 2

    older = tracking.find_sweep(None, parent_run_id=failed.parent_run_id)
    assert set(tracking.trials(older)["run_id"]) == set(failed.trials.values())  # not the crash
    result = invoke(figures.main, "--parent-run-id", failed.parent_run_id, "-o", str(tmp_path))
    assert result.exit_code == 0
    assert client.list_artifacts(failed.parent_run_id, "figures")
    assert not client.list_artifacts(rerun.parent_run_id, "figures")


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (figures.main, ["--study", "nope"], "no finished sweep of study 'nope' in any experiment"),
        (figures.main, [], "give --study or --parent-run-id"),
        (figures.main, ["--parent-run-id", "0" * 32], "no run with id"),
        (figures.main, ["-s", "lr", "--experiment", "missing"], "experiment 'missing' does not"),
        (table1.main, [], "no finished sweep of study 'patch'"),
        (report.main, ["--experiment", "missing"], "experiment 'missing' does not exist"),
    ],
)
def test_user_errors_are_one_line_with_exit_status_2(client, command, args, message):
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_parent_run_id_of_a_trial_or_another_study_is_a_user_error(client, experiment_id, clock):
    sweep = fake_runs.log_sweep(client, experiment_id, "lr", clock, epochs=2)
    trial = next(iter(sweep.trials.values()))
    result = CliRunner().invoke(figures.main, ["--parent-run-id", trial])
    assert result.exit_code == 2 and "is not a sweep" in result.stderr
    result = CliRunner().invoke(table1.main, ["--parent-run-id", sweep.parent_run_id])
    assert result.exit_code == 2 and "is a sweep of study 'lr', not 'patch'" in result.stderr


def external_references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']?(https?:[^"'\s>]*)""", html, re.IGNORECASE)


def test_report_with_every_study_holds_every_figure_and_table_1(
    client, experiment_id, clock, tmp_path
):
    fake_runs.log_all_studies(client, experiment_id, clock, seeds=2, epochs=3)
    out = tmp_path / "r.html"
    result = invoke(report.main, "--output", str(out))
    assert result.exit_code == 0 and "Missing" not in result.stderr
    html = out.read_text()
    for label in [f"Figure {n}" for n in range(1, 8)] + ["Table 1"]:
        assert f"<h3>{label}</h3>" in html
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)
    # Five curve panels, two weight images, five accuracy-against-compute figures.
    assert len(images) == 7 + 5
    # Best configurations, per-study summaries, Table 1, the source's claims of activation, lr
    # and patch, per-study compute.
    assert html.count("<table") == 1 + 5 + 1 + 3 + 5
    assert html.count("<h3>Conclusions</h3>") == 5 and "2 seeds each" in html
    assert "Missing" not in html and not external_references(html)
    assert "<link" not in html and "<script" not in html
    assert "open <code>mlflow ui</code>" in html  # no server: run ids as text


def test_report_without_any_study_names_them_missing_and_succeeds(client, tmp_path):
    result = invoke(report.main, "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0
    assert result.stderr.strip() == "Missing studies: " + ", ".join(schema.REPORT_STUDIES)
    html = (tmp_path / "r.html").read_text()
    for study in schema.REPORT_STUDIES:
        assert f"Missing: study <code>{study}</code>" in html
    assert "No study has been run yet." in html


def test_report_names_a_missing_study_and_shows_the_others(client, experiment_id, clock, tmp_path):
    fake_runs.log_all_studies(client, experiment_id, clock, epochs=2, studies=["lr", "patch"])
    result = invoke(report.main, "-o", str(tmp_path / "r.html"))
    assert result.stderr.strip() == "Missing studies: activation, best_resnet, best_mixer"
    html = (tmp_path / "r.html").read_text()
    assert "<h3>Figure 2</h3>" in html and "<h3>Table 1</h3>" in html
    assert "<h3>Figure 1</h3>" not in html
