"""The Model Registry (issue 15): a study's best trial as `cifar10-<study>@champion`.

The rules are checked on hand-made sweeps (`classifier_runs`), where the accuracies are chosen;
one end-to-end test runs real sweeps through the CLI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from analysis import report
from cifar_mlflow import schema
from cifar_mlflow.cli import main
from cifar_mlflow.registry import register_sweep_champion
from tests.classifier_runs import STUDY, sweep_parent, trial

NAME = f"cifar10-{STUDY}"


@pytest.fixture
def experiment_id(tracking_store: str) -> str:
    return MlflowClient().create_experiment("registry")


def versions() -> list[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name = '{NAME}'"))


def champion_run_id() -> str:
    return MlflowClient().get_model_version_by_alias(NAME, schema.CHAMPION_ALIAS).run_id


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def test_best_valid_trial_with_a_model_becomes_the_champion_with_its_tags(experiment_id):
    parent = sweep_parent(experiment_id)
    best = trial(experiment_id, parent, best_valid_acc=0.60, test_acc=0.50)
    trial(experiment_id, parent, best_valid_acc=0.55, test_acc=0.90)  # never chosen on test
    trial(experiment_id, parent, best_valid_acc=0.80, test_acc=0.80, with_model=False)
    lines: list[str] = []

    registration = register_sweep_champion(STUDY, parent, lines.append)

    assert registration is not None and registration.run_id == best
    assert versions() == ["1"] and champion_run_id() == best
    version = MlflowClient().get_model_version(NAME, "1")
    run = MlflowClient().get_run(best)
    assert version.tags == {
        schema.TAG_STUDY: STUDY,
        schema.TAG_MODEL: "mlp",
        schema.TAG_TRIAL_KEY: run.data.tags[schema.TAG_TRIAL_KEY],
        schema.TAG_SOURCE_RUN_ID: best,
        schema.METRIC_BEST_VALID_ACC: "0.6",
        schema.METRIC_TEST_ACC: "0.5",
    }
    (output,) = run.outputs.model_outputs
    assert version.source == f"models:/{output.model_id}"
    linked = MlflowClient().get_logged_model(output.model_id).tags["mlflow.modelVersions"]
    assert json.loads(linked) == [{"name": NAME, "version": 1}]
    assert lines == [
        f"Registered {NAME} version 1 @champion (run {best}, {schema.METRIC_BEST_VALID_ACC} 0.6000)"
    ]


def test_only_a_better_sweep_adds_a_version_and_moves_the_alias(experiment_id):
    first = sweep_parent(experiment_id)
    champion = trial(experiment_id, first, best_valid_acc=0.60, test_acc=0.50)
    register_sweep_champion(STUDY, first)

    worse = sweep_parent(experiment_id)
    trial(experiment_id, worse, best_valid_acc=0.58, test_acc=0.95)
    lines: list[str] = []
    assert register_sweep_champion(STUDY, worse, lines.append) is None
    assert lines == [
        f"{NAME}@champion stays version 1 ({schema.METRIC_BEST_VALID_ACC} 0.6000; "
        "this sweep's best: 0.5800; not testable: 1 seed, single runs compared)"
    ]
    # A re-run that reuses every trial: the same best trial, as good as itself.
    rerun = sweep_parent(experiment_id, reused=(champion,))
    assert register_sweep_champion(STUDY, rerun) is None
    assert versions() == ["1"] and champion_run_id() == champion

    better = sweep_parent(experiment_id)
    winner = trial(experiment_id, better, best_valid_acc=0.65, test_acc=0.40)
    registration = register_sweep_champion(STUDY, better)
    assert registration is not None and registration.version == "2"
    assert versions() == ["1", "2"] and champion_run_id() == winner


def seeds_of(experiment_id: str, parent: str, group: str, accuracies: list[float]) -> str:
    """Trials of one setting with these accuracies; only the best logs a model. Its run id."""
    best = max(accuracies)
    ids = [
        trial(experiment_id, parent, a, a, with_model=a == best, seed_group=group)
        for a in accuracies
    ]
    return ids[accuracies.index(best)]


def test_the_alias_moves_only_for_a_lead_above_the_noise_with_the_evidence_on_it(experiment_id):
    first = sweep_parent(experiment_id)
    champion = seeds_of(experiment_id, first, "a", [0.60, 0.61, 0.59])
    register_sweep_champion(STUDY, first)

    # Its best seed beats the champion's best seed, its mean by 1 point: within the noise.
    noisy = sweep_parent(experiment_id)
    seeds_of(experiment_id, noisy, "b", [0.62, 0.58, 0.63])
    lines: list[str] = []
    assert register_sweep_champion(STUDY, noisy, lines.append) is None
    assert versions() == ["1"] and champion_run_id() == champion
    (line,) = lines
    assert line.startswith(f"{NAME}@champion stays version 1 (the challenger's lead +1.00 points")
    assert "is not above 0 points; seeds: challenger 3, champion 3" in line

    clear = sweep_parent(experiment_id)
    winner = seeds_of(experiment_id, clear, "c", [0.700, 0.705, 0.695])
    assert register_sweep_champion(STUDY, clear, min_delta=0.15) is None  # 10 points < 15
    registration = register_sweep_champion(STUDY, clear)
    assert registration is not None and champion_run_id() == winner
    tags = MlflowClient().get_model_version(NAME, registration.version).tags
    assert float(tags[schema.TAG_EVIDENCE_DIFFERENCE]) == pytest.approx(0.10)
    low, high = float(tags[schema.TAG_EVIDENCE_CI_LOW]), float(tags[schema.TAG_EVIDENCE_CI_HIGH])
    assert 0 < low < 0.10 < high
    assert tags[schema.TAG_EVIDENCE_SEEDS] == "challenger 3, champion 3"
    assert "is above 0 points" in tags[schema.TAG_EVIDENCE]


def test_a_sweep_without_any_model_registers_nothing(experiment_id):
    parent = sweep_parent(experiment_id)
    trial(experiment_id, parent, best_valid_acc=0.7, test_acc=0.7, with_model=False)
    lines: list[str] = []
    assert register_sweep_champion(STUDY, parent, lines.append) is None
    assert MlflowClient().search_registered_models() == []
    assert lines == [f"No trial of this sweep logged a model: nothing registered as {NAME}"]


def test_register_command_adds_a_version_and_leaves_the_alias(experiment_id, capsys):
    parent = sweep_parent(experiment_id)
    champion = trial(experiment_id, parent, best_valid_acc=0.60, test_acc=0.50)
    register_sweep_champion(STUDY, parent)
    other = trial(experiment_id, parent, best_valid_acc=0.40, test_acc=0.40)

    assert cli("register", "--run-id", other) == 0
    assert f"Registered {NAME} version 2 (run {other}" in capsys.readouterr().out
    assert versions() == ["1", "2"] and champion_run_id() == champion

    outside = trial(experiment_id, None, best_valid_acc=0.5, test_acc=0.5)
    assert cli("register", "--run-id", outside) == 0  # no study: named after its model
    assert MlflowClient().get_model_version("cifar10-mlp", "1").run_id == outside
    assert cli("register", "--run-id", outside, "--name", "my-classifier") == 0
    assert MlflowClient().get_model_version("my-classifier", "1").run_id == outside


def test_register_refuses_a_run_without_a_model_in_one_line(experiment_id, capsys):
    stopped = trial(experiment_id, None, best_valid_acc=0.5, test_acc=0.5, with_model=False)
    assert cli("register", "--run-id", stopped) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"Error: run {stopped} has no logged model (it did not finish training)"
    assert MlflowClient().search_registered_models() == []


@pytest.mark.e2e
def test_sweeps_register_their_best_trial_unless_told_not_to(
    tracking_store, small_synthetic_dir: Path, tmp_path: Path, capsys
):
    study = tmp_path / f"{STUDY}.yaml"
    study.write_text("model: mlp\nfixed: {hidden_sizes: [32]}\ngrid: {lr: [0.01, 0.00001]}\n")
    options = ["--dataset", "synthetic", "--epochs", "1", "--data-dir", str(small_synthetic_dir)]
    options += ["--checkpoint-dir", str(tmp_path / "ck")]
    sweep = ["sweep", "--study", str(study), *options]

    assert cli(*sweep, "--register", "false") == 0  # what `-P register=false` passes
    assert cli(*sweep, "--no-register") == 0
    assert MlflowClient().search_registered_models() == []

    assert cli(*sweep) == 0
    parents = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("cifar10").experiment_id],
        f"tags.{schema.TAG_ROLE} = '{schema.ROLE_SWEEP}'",
        order_by=["attributes.start_time DESC"],
    )
    assert versions() == ["1"]
    assert champion_run_id() == parents[0].data.tags[schema.TAG_BEST_RUN_ID]
    assert f"Registered {NAME} version 1 @champion" in capsys.readouterr().out

    assert cli(*sweep) == 0  # every trial reused: nothing new
    assert versions() == ["1"]
    assert f"{NAME}@champion stays version 1" in capsys.readouterr().out


def test_report_lists_each_registered_champion_and_how_to_load_it(experiment_id, tmp_path):
    first = sweep_parent(experiment_id)
    trial(experiment_id, first, best_valid_acc=0.60, test_acc=0.50)
    register_sweep_champion(STUDY, first)
    better = sweep_parent(experiment_id)
    trial(experiment_id, better, best_valid_acc=0.70, test_acc=0.65)
    register_sweep_champion(STUDY, better)

    result = CliRunner().invoke(report.main, ["-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    section = page.split("<h2>Registered models</h2>")[1].split("<h2>")[0]
    cells = re.findall(r"<td>(.*?)</td>", section)
    load = f"<code>mlflow.pyfunc.load_model(&quot;models:/{NAME}@champion&quot;)</code>"
    assert cells == [STUDY, NAME, "2", "champion", "mlp", "70.00", "65.00", load]
    assert f"mlflow models serve -m models:/{NAME}@champion --env-manager local" in section
