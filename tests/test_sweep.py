"""Studies and sweeps (issue 3): parent + nested trials, reuse, failures, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from cifar_mlflow import schema
from cifar_mlflow.cli import main
from cifar_mlflow.studies import StudyError, load_study

REPO = Path(__file__).resolve().parent.parent
# Small trials keep the suite fast; the sweep logic is the same at any size.
SMALL = ["--dataset", "synthetic", "--epochs", "1"]
NARROW_MIXER = ("embed_dim=64", "num_blocks=2")


def runs_of(experiment: str = "cifar10") -> list:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def parents_and_children(experiment: str = "cifar10") -> tuple[list, list]:
    runs = runs_of(experiment)
    parents = [r for r in runs if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_SWEEP]
    children = [r for r in runs if schema.TAG_PARENT_RUN_ID in r.data.tags]
    return parents, children


def folders(data_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--checkpoint-dir", str(data_dir / "ck")]


def sweep(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    """`python -m cifar_mlflow sweep` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cifar_mlflow", "sweep", *args, *SMALL, *folders(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )


def mlflow_run_sweep(*params: str, data_dir: Path) -> subprocess.CompletedProcess:
    command = ["mlflow", "run", str(REPO), "--env-manager", "local", "-e", "sweep"]
    for param in (*params, "dataset=synthetic", "epochs=1"):
        command += ["-P", param]
    command += ["-P", f"data_dir={data_dir}", "-P", f"checkpoint_dir={data_dir / 'ck'}"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env)


@pytest.mark.e2e
def test_patch_sweep_under_mlflow_run_then_reuse_and_recreate(
    tracking_store, tmp_path, small_synthetic_dir
):
    data_dir = small_synthetic_dir
    # A narrower Mixer than the default (D 64, 2 blocks) keeps four CPU trials quick.
    first = mlflow_run_sweep("study=patch", *NARROW_MIXER, data_dir=data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    parents, children = parents_and_children()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_name == "patch"
    assert parent.data.tags[schema.TAG_STUDY] == "patch"
    assert parent.data.tags[schema.TAG_VARIED] == "patch_size"
    assert sorted(int(c.data.params["patch_size"]) for c in children) == [2, 4, 8, 16]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags[schema.TAG_PARENT_RUN_ID] for c in children} == {parent.info.run_id}
    assert {c.data.tags[schema.TAG_STUDY] for c in children} == {"patch"}
    assert parent.data.metrics[schema.METRIC_TRIALS_FINISHED] == 4
    best = max(children, key=lambda c: c.data.metrics[schema.METRIC_BEST_VALID_ACC])
    assert parent.data.tags[schema.TAG_BEST_RUN_ID] == best.info.run_id
    client = MlflowClient()
    study_text = client.download_artifacts(parent.info.run_id, schema.STUDY_ARTIFACT, str(tmp_path))
    assert yaml.safe_load(Path(study_text).read_text())["grid"] == {"patch_size": [2, 4, 8, 16]}

    # The same command again: a new parent, no new trial, all four referenced as reused.
    again = mlflow_run_sweep("study=patch", *NARROW_MIXER, data_dir=data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    parents, children_after = parents_and_children()
    assert len(parents) == 2 and len(children_after) == 4
    newest = max(parents, key=lambda r: r.info.start_time)
    reused = set(newest.data.tags[schema.TAG_REUSED_RUN_IDS].split(","))
    assert reused == {c.info.run_id for c in children}
    assert newest.data.metrics[schema.METRIC_TRIALS_REUSED] == 4

    # Deleting one trial makes the next run recreate exactly that one.
    deleted = next(c for c in children if c.data.params["patch_size"] == "8")
    client.delete_run(deleted.info.run_id)
    third = mlflow_run_sweep("study=patch", *NARROW_MIXER, data_dir=data_dir)
    assert third.returncode == 0, third.stderr[-3000:]
    parents, children_now = parents_and_children()
    assert len(parents) == 3
    new_children = {c.info.run_id for c in children_now} - {c.info.run_id for c in children}
    assert len(new_children) == 1
    recreated = client.get_run(new_children.pop())
    assert recreated.data.params["patch_size"] == "8"
    assert recreated.info.status == "FINISHED"


@pytest.mark.e2e
def test_two_seeds_give_two_children_per_setting(tracking_store, small_synthetic_dir):
    result = sweep("--study", "activation", "--seeds", "2", data_dir=small_synthetic_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    _, children = parents_and_children()
    assert len(children) == 6
    seeds_by_activation: dict[str, set[str]] = {}
    for child in children:
        seeds_by_activation.setdefault(child.data.params["activation"], set()).add(
            child.data.params["seed"]
        )
    assert seeds_by_activation == {a: {"42", "43"} for a in ("relu", "tanh", "sigmoid")}
    assert {c.data.tags[schema.TAG_SEED] for c in children} == {"42", "43"}


@pytest.mark.e2e
def test_failing_trial_is_recorded_and_the_sweep_goes_on(
    tracking_store, tmp_path, small_synthetic_dir
):
    # Valid for the configuration, but the first layer cannot be allocated: fails in training.
    study = tmp_path / "too_wide.yaml"
    study.write_text(
        "model: mlp\ngrid:\n  hidden_sizes: [[64], [100000000000]]\n  activation: [relu]\n"
    )
    result = sweep("--study", str(study), data_dir=small_synthetic_dir)
    assert result.returncode == 1
    assert "1 of 2 trials failed" in result.stderr
    parents, children = parents_and_children()
    by_width = {c.data.params["hidden_sizes"]: c for c in children}
    assert by_width["64"].info.status == "FINISHED"
    failed = by_width["100000000000"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags[schema.TAG_FAILURE_REASON]
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.metrics[schema.METRIC_TRIALS_FAILED] == 1


BAD_STUDIES = {
    "not_yaml.yaml": "model: mlp\ngrid: [unclosed\n",
    "unknown_key.yaml": "model: mlp\ngrdi: {lr: [0.1]}\n",
    "bad_value.yaml": "model: mlp\ngrid: {lr: [0.1, -1]}\n",
    "unknown_option.yaml": "model: mlp\nfixed: {learning_rate: 0.1}\n",
    "no_model.yaml": "grid: {lr: [0.1]}\n",
    "empty_grid_list.yaml": "model: mlp\ngrid: {lr: []}\n",
}


@pytest.mark.parametrize("name", ["nosuchstudy", *BAD_STUDIES])
def test_bad_study_is_one_line_exit_2_and_no_run(tracking_store, tmp_path, capsys, name):
    if name in BAD_STUDIES:
        (tmp_path / name).write_text(BAD_STUDIES[name])
        name = str(tmp_path / name)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--study", name, *SMALL])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("Error: ")
    assert runs_of() == []


@pytest.mark.e2e
def test_unknown_study_under_mlflow_run_fails_its_run(tracking_store, small_synthetic_dir):
    result = mlflow_run_sweep("study=nosuchstudy", data_dir=small_synthetic_dir)
    assert result.returncode != 0
    (run,) = runs_of()
    assert run.info.status == "FAILED"
    assert "nosuchstudy" in run.data.tags[schema.TAG_FAILURE_REASON]


def test_overriding_a_varied_option_is_refused():
    with pytest.raises(StudyError, match="patch_size is varied"):
        load_study("patch").trial_configs({"patch_size": "8"})


# docs/analysis.md: what each built-in study varies and fixes.
EXPECTED_STUDIES = {
    "activation": ("mlp", {}, {"activation": ["relu", "tanh", "sigmoid"]}),
    "lr": ("resnet18", {"optimizer": "adam"}, {"lr": [0.1, 0.01, 0.001, 0.0001, 0.00001]}),
    "patch": ("mlpmixer", {}, {"patch_size": [2, 4, 8, 16]}),
    "best_resnet": (
        "resnet18",
        {"batch_size": 128, "optimizer": "adam", "lr": 1e-3, "weight_decay": 5e-3, "epochs": 30},
        {},
    ),
    "best_mixer": (
        "mlpmixer",
        {
            "embed_dim": 512,
            "num_blocks": 8,
            "drop_rate": 0.4,
            "batch_size": 128,
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 5e-4,
            "epochs": 30,
        },
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_STUDIES))
def test_builtin_study_files_carry_the_settings_of_the_source_report(name):
    model, fixed, grid = EXPECTED_STUDIES[name]
    content = yaml.safe_load((schema.BUILTIN_STUDY_DIR / f"{name}.yaml").read_text())
    assert content["model"] == model
    assert (content.get("fixed") or {}) == fixed
    assert (content.get("grid") or {}) == grid
    assert content["seeds"] == 1
    configs = load_study(name).trial_configs()
    assert len(configs) == max([1, *(len(values) for values in grid.values())])
    for config in configs:
        assert config.model == model
        for option, value in fixed.items():
            assert config.value(option) == value


def test_comparison_studies_use_the_training_defaults_for_what_they_do_not_vary():
    from cifar_mlflow.config import TrainConfig

    defaults = TrainConfig()
    for name in ("activation", "lr", "patch"):
        for config in load_study(name).trial_configs():
            assert config.epochs == defaults.epochs
            assert config.batch_size == defaults.batch_size
            assert config.weight_decay == defaults.weight_decay
            assert config.optimizer == ("adam" if name == "lr" else defaults.optimizer)


def test_seeds_repeat_each_setting_with_consecutive_seeds():
    configs = load_study("lr").trial_configs({"seed": "7"}, seeds=3)
    assert len(configs) == 15
    assert sorted({c.seed for c in configs}) == [7, 8, 9]
    assert len({c.trial_key() for c in configs}) == 15


def test_the_builtin_studies_are_their_folders_files_and_sweep_help_lists_them():
    from click.testing import CliRunner

    from cifar_mlflow.cli import cli

    names = schema.builtin_studies()
    assert len(names) >= 7 and set(schema.REPORT_STUDIES) <= set(names)
    help_text = " ".join(CliRunner().invoke(cli, ["sweep", "--help"]).output.split())
    for name in names:
        assert load_study(name).name == name
        assert f"{name}," in help_text or f"{name})" in help_text
