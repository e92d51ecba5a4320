"""Each row of docs/bad-input.md's table: one line on stderr, exit status 2, no run."""

from __future__ import annotations

import importlib
import pickle
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from cifar_mlflow.cifar_pickle import CIFAR_FOLDER, TRAIN_BATCHES
from cifar_mlflow.cifar_pickle import load as read_pickle
from cifar_mlflow.cli import main as cifar_main
from cifar_mlflow.environment import available_devices
from cifar_mlflow.synthetic import write_synthetic_cifar
from cifar_mlflow.tracking.client import CLIENT_CREDENTIAL_VARIABLES

BAD_INPUT_PAGE = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
# Broken searched studies (issue 14), each a variation of one valid search.
SEARCH = (
    "model: mlp\nfixed: {epochs: 4}\nsearch: {lr: {log_uniform: [1.0e-5, 1.0e-1]}}\ntrials: 4\n"
)
BAD_SEARCHES = {
    "s_normal.yaml": SEARCH.replace("log_uniform", "normal"),
    "s_low_high.yaml": SEARCH.replace("[1.0e-5, 1.0e-1]", "[0.1, 0.01]"),
    "s_log_zero.yaml": SEARCH.replace("1.0e-5", "0"),
    "s_option.yaml": SEARCH.replace("{lr:", "{learning_rate:"),
    "s_grid.yaml": SEARCH + "grid: {activation: [relu, tanh]}\n",
    "s_trials.yaml": SEARCH.replace("trials: 4", "trials: 0"),
    "s_sampler.yaml": SEARCH + "sampler: cmaes\n",
    "s_pruner.yaml": SEARCH + "pruner: asha\n",
    "s_min_epochs.yaml": SEARCH + "min_epochs: 5\n",
    "s_refused.yaml": SEARCH.replace(
        "lr: {log_uniform: [1.0e-5, 1.0e-1]}", "drop_rate: {uniform: [0, 1]}"
    ),
}

# Data sets that load but hold something else (issue 22): a test batch broken each way, in
# the folders `dataset=cifar10` and `dataset=synthetic` read under that data_dir.
BAD_DATA_SETS = {
    "bad-labels": lambda images, labels: (images, [10, *labels[1:]]),
    "negative-labels": lambda images, labels: (images, [*labels[:-1], -1]),
    "float-labels": lambda images, labels: (images, [label + 0.5 for label in labels]),
    "float-images": lambda images, labels: (images.astype(np.float32), labels),
    "hwc-images": lambda images, labels: (
        images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
        labels,
    ),
    "small-images": lambda images, labels: (images[:, : 3 * 16 * 16], labels),
    "extra-label": lambda images, labels: (images, [*labels, 0]),
}


def write_bad_data_set(data_dir: Path, name: str) -> None:
    for folder in (data_dir / CIFAR_FOLDER, data_dir / "synthetic" / CIFAR_FOLDER):
        write_synthetic_cifar(folder, 50, 10)
        with (folder / "test_batch").open("rb") as handle:
            batch = read_pickle(handle)
        images, labels = BAD_DATA_SETS[name](batch["data"], batch["labels"])
        (folder / "test_batch").write_bytes(pickle.dumps({"data": images, "labels": labels}))


def table_rows() -> list[tuple[str, str]]:
    text = BAD_INPUT_PAGE.read_text()
    table = text.split("<!-- bad-inputs:start -->")[1].split("<!-- bad-inputs:end -->")[0]
    return re.findall(r"^\| `([^`]+)` \| (.+?) \|$", table, flags=re.MULTILINE)


ROWS = table_rows()


def test_the_table_lists_at_least_20_bad_inputs_across_train_sweep_and_analysis():
    commands = [command for command, _ in ROWS]
    assert len(commands) >= 20
    for tool in ("cifar_mlflow train", "cifar_mlflow sweep", "analysis."):
        assert any(tool in command for command in commands), tool


@pytest.fixture
def bad_files(tracking_store: str, tmp_path: Path) -> Path:
    """The broken inputs the table's commands name, in the test's working folder."""
    broken = tmp_path / "broken-data" / CIFAR_FOLDER
    broken.mkdir(parents=True)
    for name in (*TRAIN_BATCHES, "test_batch"):
        (broken / name).write_bytes(pickle.dumps({"not": "a CIFAR batch"}))
    (tmp_path / "broken.yaml").write_text("model: mlp\ngrid: [unclosed\n")
    (tmp_path / "typo.yaml").write_text("model: mlp\ngrdi: {lr: [0.1]}\n")
    (tmp_path / "not-a-folder").write_text("")
    # A tiny synthetic set where `dataset=synthetic` looks: the rows that load data load it fast.
    write_synthetic_cifar(tmp_path / "data" / "synthetic" / CIFAR_FOLDER, 50, 10)
    client = MlflowClient()
    client.delete_experiment(client.create_experiment("deleted"))
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (32, 32)).save(tmp_path / "cat.png")
    (tmp_path / "other-model").mkdir()  # a model folder, but not of an image classifier
    (tmp_path / "other-model" / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
    )
    for name, text in BAD_SEARCHES.items():
        (tmp_path / name).write_text(text)
    for name in BAD_DATA_SETS:
        write_bad_data_set(tmp_path / name, name)
    return tmp_path


def invoke(command: str) -> int:
    """Run a command line of the table in this process: `VAR=value python -m MODULE args`."""
    words = shlex.split(command)
    python = words.index("python")
    env = dict(word.split("=", 1) for word in words[:python])
    module, args = words[python + 2], words[python + 3 :]
    mp = pytest.MonkeyPatch()
    for name, value in env.items():
        mp.setenv(name, value)
    for name in CLIENT_CREDENTIAL_VARIABLES:  # a URI's credentials end up there: restored after
        mp.delenv(name, raising=False)
    try:
        if module == "cifar_mlflow":
            cifar_main(args)
        else:
            importlib.import_module(module).main.main(args=args, prog_name=f"python -m {module}")
    except SystemExit as exit_info:
        return exit_info.code
    finally:
        mp.undo()
    return 0


@pytest.mark.parametrize(("command", "message"), ROWS, ids=[command for command, _ in ROWS])
def test_bad_input_is_one_line_exit_2_and_no_run(bad_files, capsys, command, message):
    absent_cuda = "--device cuda" in command and "--executor ray" not in command
    if absent_cuda and "cuda" in available_devices():
        pytest.skip("this machine has CUDA")
    capsys.readouterr()
    assert invoke(command) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert (
        MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
        == []
    )
