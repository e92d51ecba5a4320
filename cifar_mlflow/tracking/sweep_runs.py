"""A sweep's MLflow calls: its parent run, the trials' child runs, the summary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.utils.time import get_current_time_millis

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.tracking.pages import search_runs
from cifar_mlflow.tracking.runs import log_tags_and_new_params, started_run


@dataclass(frozen=True)
class SweepParent:
    """What a trial needs of the sweep's parent run, also on a Ray worker: two ids."""

    run_id: str
    experiment_id: str


@contextlib.contextmanager
def sweep_run(
    study_name: str,
    study_text: str,
    varied: Sequence[str],
    params: Mapping[str, str],
    *,
    run_id: str | None = None,
    experiment: str | None = None,
) -> Iterator[SweepParent]:
    """The parent run of a sweep; its trials are created with `create_trial_run`."""
    with started_run(study_name, run_id=run_id, experiment=experiment) as run:
        tags = {
            schema.TAG_STUDY: study_name,
            schema.TAG_ROLE: schema.ROLE_SWEEP,
            schema.TAG_VARIED: ",".join(varied),
            schema.TAG_RUN_NAME: study_name,
        }
        log_tags_and_new_params(run, tags, params)
        MlflowClient().log_text(run.info.run_id, study_text, schema.STUDY_ARTIFACT)
        yield SweepParent(run.info.run_id, run.info.experiment_id)


def mark_search(parent: SweepParent, search_key: str) -> None:
    """Tag the parent run with the key of the search it continues."""
    MlflowClient().set_tag(parent.run_id, schema.TAG_SEARCH_KEY, search_key)


def create_trial_run(
    parent: SweepParent,
    config: TrainConfig,
    study_name: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """A child run of `parent` for one trial, to be filled by `train_tracked(run_id=...)`."""
    run = MlflowClient().create_run(
        parent.experiment_id,
        run_name=config.run_name(),
        tags={
            schema.TAG_PARENT_RUN_ID: parent.run_id,
            schema.TAG_ROLE: schema.ROLE_TRIAL,
            schema.TAG_STUDY: study_name,
            **(tags or {}),
        },
    )
    return run.info.run_id


def adopt_trial_run(parent: SweepParent, run_id: str, tags: Mapping[str, str]) -> None:
    """Move a trial under `parent`, where the sweep that continues it shows it, with `tags`."""
    tags = {schema.TAG_PARENT_RUN_ID: parent.run_id, **tags}
    MlflowClient().log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])


def end_running_trials(parent: SweepParent, status: str) -> None:
    """End the trial runs of `parent` still RUNNING (their workers are gone) with `status`."""
    client = MlflowClient()
    running = search_runs(
        client,
        [parent.experiment_id],
        f"tags.`{schema.TAG_PARENT_RUN_ID}` = '{parent.run_id}' and attributes.status = 'RUNNING'",
    )
    for run in running:
        client.set_terminated(run.info.run_id, status)


def record_sweep_summary(
    parent: SweepParent,
    counts: Mapping[str, int],
    reused_run_ids: Sequence[str],
    best: tuple[str, float] | None,
) -> None:
    """Counts of finished/failed/reused trials, the reused runs and the best trial."""
    metrics = {
        schema.METRIC_TRIALS_FINISHED: counts.get("finished", 0),
        schema.METRIC_TRIALS_FAILED: counts.get("failed", 0),
        schema.METRIC_TRIALS_REUSED: counts.get("reused", 0),
    }
    if "stopped" in counts:  # only a search stops trials
        metrics[schema.METRIC_TRIALS_STOPPED] = counts["stopped"]
    tags = {schema.TAG_REUSED_RUN_IDS: ",".join(reused_run_ids)}
    if best is not None:
        tags[schema.TAG_BEST_RUN_ID] = best[0]
        metrics[schema.METRIC_BEST_VALID_ACC] = best[1]
    now = get_current_time_millis()
    MlflowClient().log_batch(
        parent.run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
