"""The only module of `analysis` that talks to MLflow: sweeps and trials → tidy pandas frames.

Everything else in the package works on the frames returned here, so it can be tested on
hand-made frames without a tracking store.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from cifar_mlflow import schema
from cifar_mlflow.errors import UserError
from cifar_mlflow.tracking.client import check_tracking_uri, run_url
from cifar_mlflow.tracking.lookups import run_by_id
from cifar_mlflow.tracking.pages import all_pages, finished_sweep_trials, quoted, search_runs

__all__ = ["AnalysisError", "Sweep", "Tracking", "run_url", "runs_frame"]

# Per-run, per-metric history requests are independent REST round trips: overlapping them hides
# the latency of a remote server (sequentially, 60 requests x 50 ms is already 3 s). Kept under
# MLflow's HTTP connection pool size (MLFLOW_HTTP_POOL_MAXSIZE, 10) so connections are reused.
HISTORY_THREADS = 8
RUN_COLUMNS = ["run_id", "experiment_id", "run_name", "status", "start_time"]
HISTORY_COLUMNS = ["run_id", "metric", "step", "timestamp", "value"]
CHAMPION_COLUMNS = ["name", "version", "alias", "study", "model", "run_id", *schema.VERSION_METRICS]


class AnalysisError(UserError):
    """A user error: unknown study, experiment or run, or nothing to analyse."""


@dataclass(frozen=True)
class Sweep:
    """A sweep's parent run, as far as the analysis needs it."""

    run_id: str
    experiment_id: str
    study: str
    varied: tuple[str, ...]  # the config fields its grid varies; empty for best_* studies
    best_run_id: str | None
    reused_run_ids: tuple[str, ...]

    @classmethod
    def from_run(cls, run: Run) -> Sweep:
        tags = run.data.tags
        return cls(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            study=tags.get(schema.TAG_STUDY, ""),
            varied=_split(tags.get(schema.TAG_VARIED, "")),
            best_run_id=tags.get(schema.TAG_BEST_RUN_ID) or None,
            reused_run_ids=_split(tags.get(schema.TAG_REUSED_RUN_IDS, "")),
        )


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """Runs as rows, in the column layout of `mlflow.search_runs` (`params.lr`, `metrics.x`...)."""
    rows = [
        {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
            **{f"params.{key}": value for key, value in run.data.params.items()},
            **{f"metrics.{key}": value for key, value in run.data.metrics.items()},
            **{f"tags.{key}": value for key, value in run.data.tags.items()},
        }
        for run in runs
    ]
    return pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)


class Tracking:
    """Read access to a tracking server (plus logging figures to a sweep's parent run)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        # `None` resolves like every MLflow tool: MLFLOW_TRACKING_URI, else MLflow's default.
        # The analysis prints tables and file names; MLflow's download bars would interleave.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        check_tracking_uri(tracking_uri or mlflow.get_tracking_uri())
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri: str = self.client.tracking_uri

    def experiment_ids(self, experiment: str | None = None) -> list[str]:
        """The named experiment, or every active experiment when `experiment` is None."""
        if experiment is not None:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                raise AnalysisError(f"experiment {experiment!r} does not exist")
            return [found.experiment_id]
        pages = all_pages(
            lambda token: self.client.search_experiments(max_results=1000, page_token=token)
        )
        return [found.experiment_id for found in pages]

    def _finished_sweeps(
        self, experiment_ids: list[str], study: str | None = None, max_results: int | None = None
    ) -> list[Run]:
        filters = [
            f"tags.{schema.TAG_ROLE} = '{schema.ROLE_SWEEP}'",
            "attributes.status = 'FINISHED'",
        ]
        if study is not None:
            filters.append(f"tags.{schema.TAG_STUDY} = {quoted(study)}")
        return search_runs(self.client, experiment_ids, " AND ".join(filters), limit=max_results)

    def latest_sweep(self, study: str, experiment: str | None = None) -> Sweep | None:
        """The most recently started finished sweep of `study`, or None when it never ran."""
        found = self._finished_sweeps(self.experiment_ids(experiment), study, max_results=1)
        return Sweep.from_run(found[0]) if found else None

    def studies_with_sweeps(self, experiment: str | None = None) -> list[str]:
        runs = self._finished_sweeps(self.experiment_ids(experiment))
        return sorted({run.data.tags.get(schema.TAG_STUDY, "") for run in runs} - {""})

    def searched_studies(self, experiment: str | None = None) -> list[str]:
        """Studies with a finished sweep of a search (issue 14), by name."""
        runs = self._finished_sweeps(self.experiment_ids(experiment))
        searched = [run for run in runs if schema.TAG_SEARCH_KEY in run.data.tags]
        return sorted({run.data.tags.get(schema.TAG_STUDY, "") for run in searched} - {""})

    def sweep_by_id(self, parent_run_id: str) -> Sweep:
        run = run_by_id(parent_run_id, self.client)
        if run.data.tags.get(schema.TAG_ROLE) != schema.ROLE_SWEEP:
            raise AnalysisError(
                f"run {parent_run_id} is not a sweep (no tag {schema.TAG_ROLE}={schema.ROLE_SWEEP})"
            )
        return Sweep.from_run(run)

    def find_sweep(
        self,
        study: str | None,
        experiment: str | None = None,
        parent_run_id: str | None = None,
    ) -> Sweep:
        """The sweep to analyse: `parent_run_id` when given, else the study's latest one."""
        if parent_run_id is not None:
            sweep = self.sweep_by_id(parent_run_id)
            if study is not None and sweep.study != study:
                raise AnalysisError(
                    f"run {parent_run_id} is a sweep of study {sweep.study!r}, not {study!r}"
                )
            return sweep
        if study is None:
            raise AnalysisError("give --study or --parent-run-id")
        sweep = self.latest_sweep(study, experiment)
        if sweep is None:
            where = f"experiment {experiment!r}" if experiment else "any experiment"
            known = ", ".join(self.studies_with_sweeps(experiment)) or "none"
            raise AnalysisError(
                f"no finished sweep of study {study!r} in {where} (studies with one: {known})"
            )
        return sweep

    def trials(self, sweep: Sweep) -> pd.DataFrame:
        """The sweep's finished children plus the finished runs it reused, one row per run."""
        # A reused trial may live in another experiment than the sweep that reuses it.
        reused_scope = self.experiment_ids() if sweep.reused_run_ids else None
        runs = finished_sweep_trials(
            self.client, sweep.experiment_id, sweep.run_id, sweep.reused_run_ids, reused_scope
        )
        return runs_frame(runs)

    def history(self, run_ids: Iterable[str], metrics: Sequence[str]) -> pd.DataFrame:
        """Long frame of every logged value of `metrics` for the runs: one row per value."""
        requests = [(run_id, metric) for run_id in run_ids for metric in metrics]
        with ThreadPoolExecutor(HISTORY_THREADS) as pool:
            histories = pool.map(lambda request: self.client.get_metric_history(*request), requests)
            rows = [
                (run_id, value.key, value.step, value.timestamp, value.value)
                for (run_id, _), history in zip(requests, histories, strict=True)
                for value in history
            ]
        return pd.DataFrame(rows, columns=HISTORY_COLUMNS)

    def artifact_bytes(self, run_id: str, path: str) -> bytes | None:
        """The content of one artifact of a run, or None when the run has no such artifact."""
        folder = str(Path(path).parent) if Path(path).parent != Path(".") else None
        if path not in {item.path for item in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def registered_champions(self) -> pd.DataFrame:
        """The `champion` version of each `cifar10-<study>` registered model, one row each."""
        prefix = schema.REGISTERED_MODEL_PREFIX
        models = all_pages(
            lambda token: self.client.search_registered_models(
                f"name LIKE '{prefix}%'", order_by=["name ASC"], page_token=token
            )
        )
        rows = []
        for model in models:
            version = model.aliases.get(schema.CHAMPION_ALIAS)
            if version is None:
                continue
            tags = self.client.get_model_version(model.name, version).tags
            rows.append(
                {
                    "name": model.name,
                    "version": str(version),
                    "alias": schema.CHAMPION_ALIAS,
                    "study": tags.get(schema.TAG_STUDY, model.name.removeprefix(prefix)),
                    "model": tags.get(schema.TAG_MODEL, ""),
                    "run_id": tags.get(schema.TAG_SOURCE_RUN_ID, ""),
                    **{m: float(tags.get(m, "nan")) for m in schema.VERSION_METRICS},
                }
            )
        return pd.DataFrame(rows, columns=CHAMPION_COLUMNS)

    def log_artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str) -> None:
        """Attach files to a run: the only write any analysis tool makes."""
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)
