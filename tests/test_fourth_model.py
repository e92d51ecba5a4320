"""A model defined in one file outside the package goes through every real command (issue 21).

`tests/tiny_cnn_model.py` registers `tinycnn` with an option of its own, `channels`. Named in
CIFAR_MLFLOW_MODELS, and with no other edit, it is trained by `mlflow run` (its option passed
as an undeclared `-P`), swept over a grid and searched by `sweep`, drawn by its own weight
figure, registered by `register` and answered by the registered model, which is loaded and
served where CIFAR_MLFLOW_MODELS is not set. Every command is a subprocess on a temporary
SQLite store, a tiny synthetic data set and one epoch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from PIL import Image

from benchmarks.plain_server import model_server
from cifar_mlflow import schema
from cifar_mlflow.models.registry import EXTRA_MODELS_VARIABLE
from tests.classifier_runs import colour_images
from tests.test_serving import served_answers

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL_FILE = Path(__file__).with_name("tiny_cnn_model.py")
MODEL_URI = "models:/cifar10-tinycnn/1"
# The training options every command below shares: tiny data, one epoch, this CPU.
SMALL = {"dataset": "synthetic", "epochs": "1", "batch_size": "64", "device": "cpu"}
NOT_TINYCNN = "activation,hidden_sizes,mixer_activation,patch_size,embed_dim,num_blocks,drop_rate"


@dataclass
class Store:
    folder: Path
    env: dict[str, str]  # with the extra model named
    client: MlflowClient
    experiment_id: str
    data_dir: Path

    def run(self, *command: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> str:
        """`command`'s output; it must succeed. The checkout is where `mlflow run` runs."""
        process = subprocess.run(
            command, cwd=cwd, env=env or self.env, capture_output=True, text=True, timeout=300
        )
        assert process.returncode == 0, process.stderr[-3000:]
        return process.stdout

    def runs(self, study: str) -> list[Run]:
        """The training runs of `study` (not a sweep's parent run)."""
        runs = self.client.search_runs([self.experiment_id], f"tags.study = '{study}'")
        return [run for run in runs if run.data.tags.get(schema.TAG_ROLE) != schema.ROLE_SWEEP]

    def small(self) -> dict[str, str]:
        """The options every training below shares: tiny data, one epoch, this CPU."""
        folders = {"data_dir": str(self.data_dir), "checkpoint_dir": str(self.folder / "ck")}
        return {**SMALL, **folders}


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, migrated_db: Path, small_synthetic_dir: Path
) -> Store:
    folder = tmp_path_factory.mktemp("fourth-model")
    shutil.copy(migrated_db, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        "cifar10", artifact_location=(folder / "artifacts").as_uri()
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` = this venv's
        "MLFLOW_TRACKING_URI": uri,
        EXTRA_MODELS_VARIABLE: str(MODEL_FILE),
    }
    return Store(folder, env, client, experiment_id, small_synthetic_dir)


@pytest.fixture(scope="module")
def trained(store: Store) -> Run:
    """`mlflow run . -e train -P model=tinycnn -P channels=4`: `channels` is not declared."""
    params = {**store.small(), "model": "tinycnn", "channels": "4"}
    command = [str(BIN / "mlflow"), "run", ".", "--env-manager", "local"]
    command += ["--experiment-name", "cifar10", "-e", "train"]
    for name, value in params.items():
        command += ["-P", f"{name}={value}"]
    store.run(*command)
    (run,) = store.runs(schema.NO_STUDY)
    return run


def test_mlflow_run_trains_it_with_its_own_option(trained: Run) -> None:
    assert trained.info.status == "FINISHED"
    assert trained.data.params["model"] == "tinycnn"
    assert trained.data.params["channels"] == "4"
    assert trained.info.run_name == "tinycnn-ch4-seed42"  # its run-name key
    tags = trained.data.tags
    assert tags[schema.TAG_MODEL] == "tinycnn"
    assert tags[schema.TAG_UNUSED_PARAMS] == NOT_TINYCNN  # the others' options, not its own


def test_its_own_weight_figure_is_logged(trained: Run, store: Store, tmp_path: Path) -> None:
    path = mlflow.artifacts.download_artifacts(
        run_id=trained.info.run_id,
        artifact_path=schema.WEIGHTS_FIGURE_ARTIFACT,
        tracking_uri=store.env["MLFLOW_TRACKING_URI"],
        dst_path=str(tmp_path),
    )
    # `kernels_figure`: 4 kernels in a 2×2 grid on a 4×4 in figure, at matplotlib's 100 dpi.
    assert Image.open(path).size == (400, 400)


def test_a_value_its_option_refuses_fails_in_one_line_before_any_run(store: Store) -> None:
    before = len(store.client.search_runs([store.experiment_id]))
    options = [f"--{k.replace('_', '-')}={v}" for k, v in store.small().items()]
    command = [sys.executable, "-m", "cifar_mlflow", "train", "--model", "tinycnn", *options]
    process = subprocess.run(
        [*command, "--channels", "65"], cwd=REPO, env=store.env, capture_output=True, text=True
    )
    assert process.returncode == 2
    assert process.stderr.strip() == "Error: channels must be an integer in [1, 64], got 65"
    assert len(store.client.search_runs([store.experiment_id])) == before


def sweep(store: Store, study: Path, content: str) -> list[Run]:
    fixed = ", ".join(f"{name}: {value!r}" for name, value in store.small().items())
    study.write_text(f"model: tinycnn\nfixed: {{{fixed}}}\n{content}")
    store.run(sys.executable, "-m", "cifar_mlflow", "sweep", "--study", str(study), "--no-register")
    return store.runs(study.stem)


def test_sweep_runs_a_grid_over_its_option(store: Store, tmp_path: Path) -> None:
    runs = sweep(store, tmp_path / "tiny_grid.yaml", "grid: {channels: [2, 3]}\n")
    assert sorted(run.data.params["channels"] for run in runs) == ["2", "3"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert sorted(run.info.run_name for run in runs) == ["tinycnn-ch2-seed42", "tinycnn-ch3-seed42"]


def test_a_search_samples_its_option(store: Store, tmp_path: Path) -> None:
    search = "search: {channels: {int: [2, 6]}}\ntrials: 2\nsampler: random\npruner: none\n"
    runs = sweep(store, tmp_path / "tiny_search.yaml", search)
    assert len(runs) == 2
    assert all(2 <= int(run.data.params["channels"]) <= 6 for run in runs)
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_registered_model_is_served_without_the_model_file(
    trained: Run, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = [sys.executable, "-m", "cifar_mlflow"]
    registered = store.run(*python, "register", "--run-id", trained.info.run_id)
    assert "cifar10-tinycnn version 1" in registered
    # Neither the variable nor the checkout (tests/) where the model was defined: the logged
    # model carries the network's code.
    bare = {k: v for k, v in store.env.items() if k != EXTRA_MODELS_VARIABLE}
    image = tmp_path / "image.png"
    pixels, _ = colour_images(1, seed=3)
    Image.fromarray(pixels[0]).save(image)
    answer = store.run(*python, "predict", "--model", MODEL_URI, str(image), env=bare, cwd=tmp_path)
    assert answer.startswith(f"{image}\t")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.env["MLFLOW_TRACKING_URI"])
    assert type(mlflow.pytorch.load_model(MODEL_URI)).__name__ == "TinyCNN"
    model = mlflow.pyfunc.load_model(MODEL_URI)
    with model_server(MODEL_URI, tmp_path, bare) as (url, _):
        served_answers(url, model, pixels)
