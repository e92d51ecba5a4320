"""What the built-in searches promise (issue 22): TPE samples, Hyperband stops at its rungs,
a failed trial counts toward `trials` and is never run again.
"""

from __future__ import annotations

import dataclasses
import math

from cifar_mlflow import schema
from cifar_mlflow.search.state import Ending, SearchState
from cifar_mlflow.studies import load_study
from tests.test_search import search, trial_runs

TPE_STARTUP_TRIALS = 10  # optuna's TPESampler default: random draws until then
# Every trial of this search diverges (an SGD rate of 50 or more on the MLP): each one FAILED.
FAILING_SEARCH = """\
model: mlp
fixed: {hidden_sizes: [16], epochs: 2, train_size: 64}
search:
  lr: {log_uniform: [50, 100]}
trials: 3
sampler: random
pruner: none
"""


def learning_rate_quality(values: dict) -> float:
    """A smooth objective with its best at lr = 1e-3: what TPE should home in on."""
    return 1.0 - abs(math.log10(values["lr"]) + 3) / 5


def sampled(study: str, sampler: str, count: int, seed: int = 7) -> list[dict]:
    spec = dataclasses.replace(load_study(study).search, sampler=sampler)
    state = SearchState(spec, 15, seed, [])
    values = []
    for _ in range(count):
        number, trial = state.ask()
        state.tell(number, Ending.COMPLETE, learning_rate_quality(trial))
        values.append(trial)
    return values


def test_tpe_draws_as_random_during_start_up_then_from_what_it_learnt():
    for study in ("lr_search", "mixer_search"):
        assert load_study(study).search.sampler == "tpe"
        tpe = sampled(study, "tpe", TPE_STARTUP_TRIALS + 6)
        uniform = sampled(study, "random", TPE_STARTUP_TRIALS + 6)
        assert tpe[:TPE_STARTUP_TRIALS] == uniform[:TPE_STARTUP_TRIALS], study
        after = range(TPE_STARTUP_TRIALS, TPE_STARTUP_TRIALS + 6)
        assert all(tpe[i] != uniform[i] for i in after), study
        # Its draws after start-up lie nearer the best rate than the random ones, on average.
        tpe_quality = sum(learning_rate_quality(tpe[i]) for i in after)
        assert tpe_quality > sum(learning_rate_quality(uniform[i]) for i in after), study


def test_hyperband_of_mixer_search_stops_trials_at_its_rungs_only():
    """min_epochs 2, 15 epochs, reduction factor 3: the rungs are epochs 2 and 6."""
    spec = load_study("mixer_search").search
    assert spec.pruner == "hyperband" and spec.min_epochs == 2
    state = SearchState(spec, 15, 0, [])
    stopped_at = {}
    for trial in range(30):
        number, _ = state.ask()
        quality = (trial * 7919 % 30) / 30  # a spread of good and bad trials, in mixed order
        for epoch in range(1, 16):
            if state.report(number, epoch, quality * epoch / 15):
                stopped_at[trial] = epoch
                state.tell(number, Ending.STOPPED)
                break
        else:
            state.tell(number, Ending.COMPLETE, quality)
    assert len(stopped_at) >= 5
    assert set(stopped_at.values()) <= {2, 6}, stopped_at


def test_failed_trials_count_toward_trials_and_are_not_run_again(
    tracking_store, tmp_path, small_synthetic_dir, capsys
):
    study = tmp_path / "failing_search.yaml"
    study.write_text(FAILING_SEARCH)
    search(study, data_dir=small_synthetic_dir)
    runs = trial_runs()
    assert sorted(runs) == [1, 2, 3]
    assert {run.info.status for run in runs.values()} == {"FAILED"}
    assert all(schema.TAG_FAILURE_REASON in run.data.tags for run in runs.values())

    search(study, data_dir=small_synthetic_dir)  # the search has its 3 trials: nothing to run
    assert trial_runs().keys() == runs.keys()
    for number, run in trial_runs().items():
        assert run.info.run_id == runs[number].info.run_id
        assert run.info.status == "FAILED"
        assert run.info.end_time == runs[number].info.end_time  # not continued, not re-run

    search(study, "--trials", "4", data_dir=small_synthetic_dir)  # one more, and only one
    assert sorted(trial_runs()) == [1, 2, 3, 4]
