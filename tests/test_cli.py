"""`python -m cifar_mlflow train`: help, user errors, data folders and what a run records."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from cifar_mlflow import cifar_pickle, cli, data, engine, environment, schema
from cifar_mlflow.config import TrainConfig, settings
from cifar_mlflow.tracking import callback, runs
from tests.test_data import write_cifar_folder

REPO = Path(__file__).resolve().parents[1]
FIELDS = [setting.name for setting in settings()]

# Run in a subprocess with the network cut off: no connection, no name lookup can succeed.
OFFLINE_MAIN = """
import socket, sys, urllib.request
def refuse(*args, **kwargs):
    raise OSError("network unreachable (blocked by the test)")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
urllib.request.urlopen = refuse
from cifar_mlflow.cli import main
main(sys.argv[1:])
"""


@pytest.fixture
def store(tracking_store: str) -> MlflowClient:
    return MlflowClient(tracking_store)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`python -m cifar_mlflow ARGS` in-process: exit status, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        cli.main(list(args))
    out, err = capsys.readouterr()
    return caught.value.code, out, err


def all_runs(client: MlflowClient) -> list:
    experiments = client.search_experiments(view_type=ViewType.ALL)
    return client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)


# --- help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_group_help(flag: str, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, flag)
    assert code == 0
    assert "Usage: python -m cifar_mlflow" in out
    assert "train" in out


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_train_help_lists_every_option_with_its_default(
    flag: str, capsys: pytest.CaptureFixture
) -> None:
    code, out, _ = run_cli(capsys, "train", flag)
    assert code == 0
    text = " ".join(out.split())
    for name in FIELDS:
        assert f"--{name.replace('_', '-')}" in text
    assert "--experiment" in text and "--study" in text
    assert "[default: 1024,512,64,64]" in text
    assert "[default: adamw]" in text


def test_python_dash_m_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", "train", "-h"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "--patch-size" in result.stdout


# --- user errors: one line, status 2, no run ---------------------------------------------------

BAD_OPTIONS = [
    (["--model", "vgg16"], "model", "mlp | resnet18 | mlpmixer"),
    (["--optimizer", "rmsprop"], "optimizer", "sgd | momentum | adam | adamw"),
    (["--activation", "swish"], "activation", "relu | tanh | sigmoid"),
    (["--model", "mlpmixer", "--mixer-activation", "tanh"], "mixer_activation", "gelu | relu"),
    (["--model", "mlpmixer", "--patch-size", "5"], "patch_size", "divisor of 32"),
    (["--model", "mlpmixer", "--patch_size", "7"], "patch_size", "divisor of 32"),
    (["--lr", "0"], "lr", "> 0"),
    (["--lr", "-0.01"], "lr", "> 0"),
    (["--epochs", "0"], "epochs", ">= 1"),
    (["--batch-size", "0"], "batch_size", ">= 1"),
    (["--drop-rate", "1"], "drop_rate", "[0, 1)"),
    (["--drop_rate", "-0.2"], "drop_rate", "[0, 1)"),
    (["--hidden-sizes", "1024;512"], "hidden_sizes", "comma-separated list of integers"),
    (["--hidden-sizes", "abc"], "hidden_sizes", "comma-separated list of integers"),
    (["--lr", "fast"], "lr", "number"),
    (["--learning-rate", "0.1"], "--learning-rate", "No such option"),
]


@pytest.mark.parametrize(
    ("args", "option", "allowed"), BAD_OPTIONS, ids=[" ".join(c[0]) for c in BAD_OPTIONS]
)
def test_bad_option_is_one_line_status_2_and_no_run(
    args: list[str],
    option: str,
    allowed: str,
    store: MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    # Small, valid settings for everything else: without validation this would train.
    base = ["--dataset", "synthetic", "--data-dir", str(tmp_path / "data"), "--train-size", "64"]
    base += [] if "--epochs" in args else ["--epochs", "1"]
    code, out, err = run_cli(capsys, "train", *base, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert option in lines[0]
    assert allowed in lines[0]
    assert out == ""
    assert all_runs(store) == []
    assert not (tmp_path / "data").exists()  # rejected before touching the data


def test_unused_option_is_reported_not_dropped(capsys: pytest.CaptureFixture) -> None:
    options = {"model": "resnet18", "activation": "tanh", "optimizer": "sgd"}
    cli.warn_ignored(TrainConfig.from_overrides(options))
    cli.warn_ignored(TrainConfig(model="resnet18", optimizer="sgd", momentum=0.5))
    err = capsys.readouterr().err
    assert "activation=tanh" in err and "model=resnet18" in err
    assert "momentum=0.5" in err and "optimizer=sgd" in err
    cli.warn_ignored(TrainConfig.from_overrides({"model": "mlp", "activation": "tanh"}))
    assert capsys.readouterr().err == ""


def test_missing_data_folder_offline_fails_fast_with_one_line(
    store: MlflowClient, tmp_path: Path
) -> None:
    missing = tmp_path / "no-cifar-here"
    env = {
        **os.environ,
        # Belt and braces: any HTTP client that ignores the patched socket meets a closed port.
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "",
        "NO_PROXY": "",
    }
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_MAIN, "train", "--data-dir", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert elapsed < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(missing / cifar_pickle.CIFAR_FOLDER) in lines[0]
    assert "dataset=synthetic" in lines[0]
    assert all_runs(store) == []


# --- a run through the CLI ---------------------------------------------------------------------


def test_a_cifar_layout_folder_trains_via_data_dir(
    store: MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    offline: None,
) -> None:
    folder = write_cifar_folder(tmp_path / "mine", per_batch=60, test_size=50)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    intervals: list[float] = []
    original_init = SystemMetricsMonitor.__init__

    def spy_init(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        intervals.append(self.sampling_interval)

    monkeypatch.setattr(SystemMetricsMonitor, "__init__", spy_init)
    args = ["--data-dir", str(tmp_path / "mine"), "--hidden-sizes", "32", "--epochs", "2"]
    code, out, err = run_cli(capsys, "train", *args, "--batch_size", "64", "--lr", "1e-3")
    assert code == 0, err

    (run,) = all_runs(store)
    assert run.info.status == "FINISHED"
    experiment = store.get_experiment(run.info.experiment_id)
    assert experiment.name == "cifar10"
    assert experiment.tags[schema.EXPERIMENT_KIND_TAG] == schema.EXPERIMENT_KIND

    # The data set it trained on: the folder's content, not the official CIFAR-10.
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "cifar10"
    assert dataset_input.dataset.digest == data.read_cifar_folder(folder).digest()
    assert str(folder.resolve()) in dataset_input.dataset.source

    config = TrainConfig.from_overrides(
        {"data_dir": str(tmp_path / "mine"), "hidden_sizes": (32,), "epochs": 2, "batch_size": 64}
    )
    assert run.data.params == config.to_params()
    assert run.info.run_name == "mlp-actrelu-seed42"
    tags = run.data.tags
    assert tags[schema.TAG_STUDY] == "none"
    assert tags[schema.TAG_MODEL] == "mlp"
    assert tags[schema.TAG_TRIAL_KEY] == config.trial_key()
    assert tags[schema.TAG_SEED] == "42"

    history = store.get_metric_history(run.info.run_id, schema.METRIC_TRAIN_LOSS)
    assert sorted(m.step for m in history) == [1, 2]
    assert run.data.metrics[schema.METRIC_NUM_PARAMS] == 3072 * 32 + 32 + 32 * 10 + 10
    saved = json.loads((Path(store.download_artifacts(run.info.run_id, "config.json"))).read_text())
    assert saved["config"] == config.to_params()
    assert saved[schema.TAG_TRIAL_KEY] == config.trial_key()

    # The logged model, an output of the run, carries its params and final metrics (the UI's
    # model page shows them).
    models = store.search_logged_models(experiment_ids=[run.info.experiment_id])
    (model,) = [m for m in models if m.source_run_id == run.info.run_id]
    assert [output.model_id for output in run.outputs.model_outputs] == [model.model_id]
    assert model.params == config.to_params()
    model_metrics = {metric.key: metric.value for metric in model.metrics}
    assert set(model_metrics) == set(schema.FINAL_METRICS)
    assert model_metrics[schema.METRIC_TEST_ACC] == run.data.metrics[schema.METRIC_TEST_ACC]

    # The user's sampling interval wins over the project's default.
    assert intervals == [1.0]
    assert run.info.run_id in out and "mlflow ui" in out


@pytest.mark.parametrize(
    "failing",
    ["log_dataset", "log_model"],
    ids=["run description, written beside training", "model upload, beside the test split"],
)
def test_a_request_failing_in_a_background_thread_fails_the_run(
    failing: str,
    store: MlflowClient,
    small_synthetic_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(*args, **kwargs) -> None:
        raise MlflowException("refused by the test server")

    monkeypatch.setattr(runs if failing == "log_dataset" else callback, failing, refused)
    args = ["--dataset", "synthetic", "--data-dir", str(small_synthetic_dir), "--epochs", "2"]
    with pytest.raises(MlflowException, match="refused by the test server"):
        cli.main(["train", *args, "--checkpoint-dir", str(tmp_path / "ck")])
    (run,) = all_runs(store)
    assert run.info.status == "FAILED"
    assert "refused by the test server" in run.data.tags[schema.TAG_FAILURE_REASON]
    logged_steps = [
        m.step for m in store.get_metric_history(run.info.run_id, schema.METRIC_TRAIN_LOSS)
    ]
    if failing == "log_dataset":
        # Found out before the first epoch is reported, not after the whole training.
        assert logged_steps == []
    else:
        assert logged_steps == [1, 2]
        assert schema.METRIC_TEST_ACC in run.data.metrics  # the results stay with the failed run


def test_same_seed_gives_identical_train_loss_through_the_cli(
    store: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    options = {"dataset": "synthetic", "data_dir": str(tmp_path / "data"), "train_size": "512"}
    options |= {"epochs": "2", "device": "cpu"}
    args = [part for name, value in options.items() for part in (f"--{name}", value)]

    def curve() -> list[tuple[int, float]]:
        code, _, err = run_cli(capsys, "train", *args)
        assert code == 0, err
        run = store.search_runs(
            [store.get_experiment_by_name("cifar10").experiment_id],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        history = store.get_metric_history(run.info.run_id, schema.METRIC_TRAIN_LOSS)
        return sorted((m.step, m.value) for m in history)

    first = curve()
    assert [step for step, _ in first] == [1, 2]
    assert curve() == first
    assert len(all_runs(store)) == 2
    # The seed matters (else the equality above proves little): another seed, another curve.
    config = TrainConfig.from_overrides({**options, "seed": "7", "epochs": "1"})
    arrays = data.load_arrays(config)
    env = environment.environment_for(config)
    losses: list[float] = []

    class Losses(engine.Callback):
        def on_epoch_end(self, metrics: schema.EpochMetrics) -> None:
            losses.append(metrics.train_loss)

    engine.fit(config, data.to_device(arrays, config, env.device), env, [Losses()])
    assert losses[0] != first[0][1]
