"""Searched studies (issue 14): sampling, early stopping, resuming the search from its runs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from analysis.report import main as report_main
from analysis.search import main as search_main
from cifar_mlflow import engine, environment, schema
from cifar_mlflow.cli import main
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.search.early_stopping import EarlyStopping
from cifar_mlflow.search.space import SearchError, parse_search
from cifar_mlflow.search.state import Ending, PastTrial, SearchState
from cifar_mlflow.studies import load_study
from cifar_mlflow.tracking.lookups import find_finished_run
from tests.test_engine import Recorder, small_config, tiny_data
from tests.test_ray_sweep import most_at_once, ray_2_cpus  # noqa: F401 — a fixture
from tests.test_sweep import folders, mlflow_run_sweep, parents_and_children

# Wide enough that the worst learning rates stay near chance level while the best learn: the
# median pruner stops some trials after their first epoch.
MLP_SEARCH = """\
model: mlp
fixed: {hidden_sizes: [64], epochs: 4, train_size: 320}
search:
  lr: {log_uniform: [1.0e-6, 3.0e-2]}
trials: 12
sampler: random
pruner: median
min_epochs: 1
"""
SYNTHETIC = ["--dataset", "synthetic"]


def search(study: Path, *args: str, data_dir: Path) -> int:
    """`python -m cifar_mlflow sweep --study STUDY ARGS` in this process: the exit status."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--study", str(study), *args, *SYNTHETIC, *folders(data_dir)])
    return exit_info.value.code


def trial_runs() -> dict[int, object]:
    _, children = parents_and_children()
    return {int(run.data.tags[schema.TAG_TRIAL_NUMBER]): run for run in children}


def newest_parent():
    parents, _ = parents_and_children()
    return max(parents, key=lambda run: run.info.start_time)


def valid_acc_epochs(run_id: str) -> list[int]:
    return sorted(
        m.step for m in MlflowClient().get_metric_history(run_id, schema.METRIC_VALID_ACC)
    )


@pytest.mark.e2e
def test_a_12_trial_search_stops_some_trials_then_continues_where_it_stopped(
    tracking_store, tmp_path, small_synthetic_dir, capsys
):
    study = tmp_path / "mlp_search.yaml"
    study.write_text(MLP_SEARCH)
    assert search(study, data_dir=small_synthetic_dir) == 0
    assert "Sweep mlp_search:" in capsys.readouterr().out
    runs = trial_runs()
    assert sorted(runs) == list(range(1, 13))
    parent = newest_parent()
    assert parent.data.params["trials"] == "12"
    assert {r.data.tags[schema.TAG_SEARCH_KEY] for r in runs.values()} == {
        parent.data.tags[schema.TAG_SEARCH_KEY]
    }
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    stopped = [r for r in runs.values() if schema.TAG_STOPPED_AT_EPOCH in r.data.tags]
    complete = [r for r in runs.values() if schema.TAG_STOPPED_AT_EPOCH not in r.data.tags]
    assert stopped and len(complete) >= 3  # the median pruner waits for three complete trials
    assert parent.data.metrics[schema.METRIC_TRIALS_STOPPED] == len(stopped)
    logged_models = MlflowClient().search_logged_models([parent.info.experiment_id])
    with_model = {model.source_run_id for model in logged_models}
    for run in stopped:
        epoch = int(run.data.tags[schema.TAG_STOPPED_AT_EPOCH])
        assert 1 <= epoch < 4
        assert re.fullmatch(
            schema.METRIC_VALID_ACC + r" 0\.\d\d below the median 0\.\d\d of \d+ complete trials",
            run.data.tags[schema.TAG_STOPPED_REASON],
        )
        assert valid_acc_epochs(run.info.run_id) == list(range(1, epoch + 1))
        assert schema.METRIC_TEST_ACC not in run.data.metrics and run.info.run_id not in with_model
    for run in complete:
        assert valid_acc_epochs(run.info.run_id) == [1, 2, 3, 4]
        assert schema.METRIC_TEST_ACC in run.data.metrics and run.info.run_id in with_model
    # The full run schema, whatever the trial's end.
    for run in runs.values():
        assert set(TrainConfig().to_params()) <= set(run.data.params)
        for tag in (schema.TAG_STUDY, schema.TAG_MODEL, schema.TAG_TRIAL_KEY, schema.TAG_SEED):
            assert tag in run.data.tags
    best = max(complete, key=lambda r: r.data.metrics[schema.METRIC_BEST_VALID_ACC])
    assert parent.data.tags[schema.TAG_BEST_RUN_ID] == best.info.run_id

    # The same command again trains nothing: every trial counts, none is resumed or re-run.
    assert search(study, data_dir=small_synthetic_dir) == 0
    assert "0 finished, 0 stopped, 12 reused" in capsys.readouterr().out
    assert trial_runs().keys() == runs.keys()
    reused = set(newest_parent().data.tags[schema.TAG_REUSED_RUN_IDS].split(","))
    assert reused == {r.info.run_id for r in runs.values()}

    # Four more trials: exactly four new runs, numbered on.
    assert search(study, "--trials", "16", data_dir=small_synthetic_dir) == 0
    after = trial_runs()
    assert sorted(after) == list(range(1, 17))
    assert {number: r.info.run_id for number, r in after.items() if number <= 12} == {
        number: r.info.run_id for number, r in runs.items()
    }

    # The analysis sees the whole search from its latest sweep, stopped trials as stopped.
    capsys.readouterr()
    assert analyse(search_main, "--study", "mlp_search", "-o", str(tmp_path / "out")) == 0
    printed = capsys.readouterr()
    table = printed.out.splitlines()
    complete_now = {
        n: r for n, r in after.items() if schema.TAG_STOPPED_AT_EPOCH not in r.data.tags
    }
    for number, run in after.items():
        if number not in complete_now:
            tags = run.data.tags
            assert (
                f"Trial {number} ({run.info.run_name}) stopped at epoch "
                f"{tags[schema.TAG_STOPPED_AT_EPOCH]}: {tags[schema.TAG_STOPPED_REASON]}"
            ) in printed.err.splitlines()
    assert "Downloading artifacts" not in printed.err
    best_number = max(
        complete_now, key=lambda n: complete_now[n].data.metrics[schema.METRIC_BEST_VALID_ACC]
    )
    best_acc = 100 * complete_now[best_number].data.metrics[schema.METRIC_BEST_VALID_ACC]
    assert table[2].startswith(f"| {best_number} | ") and f"| {best_acc:.2f} |" in table[2]
    assert len(table) == 2 + min(10, len(complete_now))
    for stem in ("best_so_far", "params", "curves"):
        assert (tmp_path / "out" / f"mlp_search_{stem}.png").stat().st_size > 0
    assert analyse(report_main, "-o", str(tmp_path / "report.html")) == 0
    assert "Search <code>mlp_search</code></h2><p>16 trials" in (
        (tmp_path / "report.html").read_text().replace("\n", "")
    )


def analyse(command, *args: str) -> int:
    """An `analysis` command in this process: its exit status."""
    try:
        command.main(args=list(args), prog_name="analysis")
    except SystemExit as exit_info:
        return exit_info.code
    return 0


@pytest.mark.e2e
def test_a_killed_search_continues_its_interrupted_trial_in_its_own_run(
    tracking_store, tmp_path, small_synthetic_dir
):
    study = tmp_path / "three.yaml"
    study.write_text(MLP_SEARCH.replace("trials: 12", "trials: 3"))
    command = [sys.executable, "-m", "cifar_mlflow", "sweep", "--study", str(study)]
    command += [*SYNTHETIC, *folders(small_synthetic_dir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("[2/3]") and "epoch 2/4" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.communicate(timeout=60)
    interrupted = trial_runs()[2]
    assert interrupted.info.status == "RUNNING"

    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = trial_runs()
    assert sorted(runs) == [1, 2, 3]
    continued = runs[2]
    assert continued.info.run_id == interrupted.info.run_id
    assert continued.info.status == "FINISHED"
    assert continued.data.params["lr"] == interrupted.data.params["lr"]
    assert "[2/3] mlp lr=" in again.stderr and "resumed after epoch" in again.stderr


# --- pieces, without tracking ------------------------------------------------------------------


class StopAt:
    """A judge that stops every trial at one epoch, and remembers what it heard."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.heard: list[tuple[int, int]] = []

    def report(self, number: int, epoch: int, valid_acc: float) -> str | None:
        self.heard.append((number, epoch))
        return f"told to stop at epoch {self.epoch}" if epoch >= self.epoch else None


def fit_with(judge: StopAt, epochs: int) -> tuple[Recorder, engine.FinalMetrics | None, list]:
    config = small_config(epochs=epochs)
    stopped: list[int] = []

    class Stopped(Recorder):
        def on_train_stopped(self, epoch: int, reason: str) -> None:
            stopped.append((epoch, reason))

    # The recorder after the stopping callback: it still hears the epoch that stopped training.
    recorder = Stopped()
    env = environment.environment_for(config)
    _, final = engine.fit(config, tiny_data(), env, [EarlyStopping(judge, 7), recorder])
    return recorder, final, stopped


def test_a_stopped_trial_ends_after_its_epoch_without_the_test_split():
    recorder, final, stopped = fit_with(StopAt(2), epochs=4)
    assert final is None
    assert stopped == [(2, "told to stop at epoch 2")]
    assert recorder.events == [("start", 4, 2), ("epoch_end", 1), ("epoch_end", 2)]


def test_a_trial_is_never_stopped_at_its_last_epoch():
    judge = StopAt(2)
    recorder, final, stopped = fit_with(judge, epochs=2)
    assert final is not None and stopped == []
    assert recorder.events[-2:] == [("test_start",), ("train_end",)]
    assert judge.heard == [(7, 1), (7, 2)]


def spec_of(text: str, base: TrainConfig | None = None):
    import yaml

    return parse_search(yaml.safe_load(text), base or TrainConfig(model="mlp", epochs=4))


def asked(spec, seed: int, past=(), count: int = 4) -> list[dict]:
    state = SearchState(spec, 4, seed, list(past))
    return [state.ask()[1] for _ in range(count)]


def test_random_sampling_repeats_with_the_same_seed_and_never_redraws_known_trials():
    spec = spec_of(MLP_SEARCH)
    assert asked(spec, 42) == asked(spec, 42)
    assert asked(spec, 42) != asked(spec, 43)
    past = [PastTrial({"lr": "0.001"}, Ending.COMPLETE, 0.5, {1: 0.5})]
    assert asked(spec, 42, past) != asked(spec, 42)  # a continued search draws new values


def test_the_median_pruner_waits_for_min_epochs_and_compares_with_complete_trials():
    spec = spec_of(MLP_SEARCH.replace("min_epochs: 1", "min_epochs: 2"))
    good = [
        PastTrial({"lr": "0.001"}, Ending.COMPLETE, 0.9, {1: 0.8, 2: 0.85, 3: 0.9, 4: 0.9})
        for _ in range(3)
    ]
    state = SearchState(spec, 4, 42, good)
    number, _ = state.ask()
    assert state.report(number, 1, 0.1) is None  # before min_epochs
    assert state.report(number, 2, 0.1) == (
        f"{schema.METRIC_VALID_ACC} 0.10 below the median 0.85 of 3 complete trials"
    )
    state.tell(number, Ending.STOPPED)
    trial = state.study.trials[-1]
    assert trial.state.name == "PRUNED" and trial.intermediate_values == {1: 0.1, 2: 0.1}


def test_choices_are_kept_as_logged_and_every_integer_of_a_small_range_is_checked():
    mixer = TrainConfig(model="mlpmixer", epochs=4)
    spec = spec_of(
        "search: {hidden_sizes: {choice: [[64], [128, 64]]}, num_blocks: {int: [1, 3]}}\n"
        "trials: 2\n",
        mixer,
    )
    assert spec.dimensions[0].choices == ("64", "128,64")
    with pytest.raises(SearchError, match="patch_size can sample 3"):
        spec_of("search: {patch_size: {int: [2, 16]}}\ntrials: 2\n", mixer)


def test_the_search_key_ignores_the_number_of_trials_but_not_the_space():
    base = TrainConfig(model="mlp", epochs=4)
    key = spec_of(MLP_SEARCH).key(base)
    assert spec_of(MLP_SEARCH.replace("trials: 12", "trials: 30")).key(base) == key
    assert spec_of(MLP_SEARCH.replace("3.0e-2", "1.0e-2")).key(base) != key
    assert spec_of(MLP_SEARCH).key(TrainConfig(model="mlp", epochs=5)) != key


def test_built_in_searches_load_and_vary_what_issue_14_names():
    assert load_study("lr_search").varied == ("lr", "weight_decay")
    assert set(load_study("mixer_search").varied) == {
        "patch_size",
        "embed_dim",
        "num_blocks",
        "drop_rate",
        "lr",
    }
    assert load_study("lr_search").model == "resnet18"
    assert load_study("mixer_search").model == "mlpmixer"


def test_a_grid_never_reuses_a_trial_that_a_search_stopped(tracking_store):
    client = MlflowClient()
    experiment_id = client.create_experiment("cifar10")
    for stopped in (True, False):
        tags = {schema.TAG_TRIAL_KEY: f"key-{stopped}"}
        if stopped:
            tags[schema.TAG_STOPPED_AT_EPOCH] = "2"
        run = client.create_run(experiment_id, tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")
    assert find_finished_run(experiment_id, "key-True") is None
    assert find_finished_run(experiment_id, "key-False") is not None


@pytest.mark.e2e
@pytest.mark.usefixtures("ray_2_cpus")
def test_a_ray_search_on_the_team_server_runs_two_trials_at_a_time_and_stops_some(
    server_env, tmp_path, small_synthetic_dir, capsys
):
    """Search state on the authenticated PostgreSQL server, trials on 2 Ray CPUs."""
    study = tmp_path / "mlp_search.yaml"
    study.write_text(MLP_SEARCH.replace("trials: 12", "trials: 8"))
    experiment = server_env["MLFLOW_EXPERIMENT_NAME"]
    assert search(study, "--executor", "ray", data_dir=small_synthetic_dir) == 0
    _, children = parents_and_children(experiment)
    runs = {int(r.data.tags[schema.TAG_TRIAL_NUMBER]): r for r in children}
    assert sorted(runs) == list(range(1, 9))
    assert most_at_once(children) == 2
    # Stopped by the actor's pruner, which heard the epochs of the trials running beside them.
    assert any(schema.TAG_STOPPED_AT_EPOCH in r.data.tags for r in runs.values())
    assert {r.info.status for r in runs.values()} == {"FINISHED"}

    # Continued, locally this time: the same search, two more trials.
    capsys.readouterr()
    assert search(study, "--trials", "10", data_dir=small_synthetic_dir) == 0
    assert "8 reused" in capsys.readouterr().out
    _, children = parents_and_children(experiment)
    assert sorted(int(r.data.tags[schema.TAG_TRIAL_NUMBER]) for r in children) == list(range(1, 11))


@pytest.mark.e2e
def test_mlflow_run_passes_trials_to_a_searched_study(
    tracking_store, tmp_path, small_synthetic_dir
):
    study = tmp_path / "mlp_search.yaml"
    study.write_text(MLP_SEARCH)
    result = mlflow_run_sweep(f"study={study}", "trials=2", data_dir=small_synthetic_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = parents_and_children()[0]
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "2"
    assert sorted(trial_runs()) == [1, 2]
