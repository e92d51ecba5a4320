"""Fake trials and sweeps, logged in exactly the shape a real sweep leaves in MLflow.

The trial configurations are the real ones: the built-in study files expanded by
`Study.trial_configs`, logged with the training side's own params, trial keys, run names and
unused-option tags. Only the numbers are made up (plausible curves and timings, deterministic
in the configuration) so tests can compare the analysis with what was logged.

A sweep is a parent run (run name = study; tags `study`, `role=sweep`, `varied`,
`reused_run_ids`, `best_run_id`; metrics `trials_*`, `best_valid_acc`; artifact `study.yaml`),
FINISHED, or FAILED when a trial failed, whose trials are nested child runs.

Each run's params, tags and metrics go in one `log_batch` call, which keeps filling a server with
hundreds of runs fast (one REST round trip per run instead of one per metric).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from cifar_mlflow import schema
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.environment import Environment
from cifar_mlflow.studies import load_study
from cifar_mlflow.tracking.runs import run_tags

TRAIN_IMAGES = 45_000
VALID_IMAGES = 5_000
# Where the fake trials "trained": on the CPU in fp32.
CPU_FP32 = Environment(torch.device("cpu"), None, torch.contiguous_format)


@dataclass
class FakeSweep:
    """What one `log_sweep` call wrote."""

    parent_run_id: str
    trials: dict[str, str] = field(default_factory=dict)  # trial_key → run_id, reused included
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Clock:
    """Strictly increasing start times (ms), so "latest sweep" is well defined in tests."""

    def __init__(self) -> None:
        self.now_ms = int(time.time() * 1000)

    def tick(self, seconds: float = 1.0) -> int:
        self.now_ms += int(seconds * 1000)
        return self.now_ms


def create_experiment(client: MlflowClient, name: str) -> str:
    """The experiment `name` (created when absent), tagged like the training side does."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, tags={schema.EXPERIMENT_KIND_TAG: schema.EXPERIMENT_KIND})


def study_configs(study: str, seeds: int = 1, epochs: int | None = None) -> list[TrainConfig]:
    """The trials of a built-in study: grid x seeds, as `mlflow run . -e sweep` makes them."""
    overrides = {} if epochs is None else {"epochs": str(epochs)}
    return load_study(study).trial_configs(overrides, seeds)


def num_params(config: TrainConfig) -> int:
    """Parameter counts of the three architectures, so Table 1 varies with the patch size."""
    if config.model == "resnet18":
        return 11_173_962
    if config.model == "mlp":
        sizes = [3072, *config.options["hidden_sizes"], 10]
        return sum(a * b + b for a, b in itertools.pairwise(sizes))
    dim, tokens = config.options["embed_dim"], (32 // config.options["patch_size"]) ** 2
    token_hidden, channel_hidden = dim // 2, 4 * dim
    norms = 2 * 2 * dim
    token_mlp = 2 * tokens * token_hidden + token_hidden + tokens
    channel_mlp = 2 * dim * channel_hidden + channel_hidden + dim
    embedding = 3 * config.options["patch_size"] ** 2 * dim + dim
    head = 2 * dim + 10 * dim + 10
    return embedding + config.options["num_blocks"] * (norms + token_mlp + channel_mlp) + head


def _quality(config: TrainConfig) -> float:
    """Final accuracy of a setting; seed-independent, so seeds of one setting agree closely."""
    options = config.options
    setting = random.Random(f"{config.model}{options['activation']}{options['patch_size']}")
    spread = setting.uniform(0, 0.08)
    lr_penalty = abs(math.log10(config.lr) + 3) * 0.08  # 1e-3 is best, as the source reports
    return max(0.2, 0.9 - spread - lr_penalty)


def _timings(config: TrainConfig, rng: random.Random) -> dict[str, float]:
    # The Mixer's work grows with its token count: larger patches train and infer faster.
    tokens = (32 // config.options["patch_size"]) ** 2
    work = {"mlp": 1.0, "resnet18": 20.0, "mlpmixer": 2.0 + tokens / 16}[config.model]
    train = work * rng.uniform(0.97, 1.03)
    inference = work * 0.02 * rng.uniform(0.95, 1.05)
    return {
        schema.METRIC_TRAIN_EPOCH_TIME_S: train,
        schema.METRIC_INFERENCE_TIME_S: inference,
        schema.METRIC_TRAIN_IMAGES_PER_S: TRAIN_IMAGES / train,
        schema.METRIC_INFERENCE_IMAGES_PER_S: VALID_IMAGES / inference,
    }


def fake_metrics(config: TrainConfig, finished: bool = True) -> tuple[list[Metric], float]:
    """Per-epoch metrics (step = epoch) and, when finished, final metrics; best valid acc."""
    rng = random.Random(f"{config.trial_key()}{config.seed}")
    quality, timestamp = _quality(config), int(time.time() * 1000)
    timings = _timings(config, rng)
    # A failed trial crashed after a third of its epochs.
    epochs = config.epochs if finished else max(1, config.epochs // 3)
    metrics, valid_accs, epoch_times = [], [], []
    for epoch in range(1, epochs + 1):
        progress = 1 - math.exp(-3 * epoch / config.epochs)
        train_acc = min(0.999, 0.1 + (quality - 0.05) * progress + rng.gauss(0, 0.005))
        valid_acc = min(0.999, 0.1 + (quality - 0.1) * progress + rng.gauss(0, 0.01))
        valid_accs.append(valid_acc)
        # The schema's records, so that a renamed metric breaks these fakes too.
        values = schema.EpochMetrics(
            epoch=epoch,
            train_loss=-math.log(train_acc) * 1.5,
            train_acc=train_acc,
            valid_loss=-math.log(valid_acc) * 1.6,
            valid_acc=valid_acc,
            epoch_time_s=timings[schema.METRIC_TRAIN_EPOCH_TIME_S] * rng.uniform(0.98, 1.02),
            lr=config.lr,
        ).metrics()
        epoch_times.append(values[schema.METRIC_EPOCH_TIME_S])
        metrics += [Metric(key, value, timestamp, epoch) for key, value in values.items()]
    if finished:
        test_acc = valid_accs[-1] + rng.gauss(0, 0.005)
        final = schema.FinalMetrics(
            test_loss=-math.log(test_acc) * 1.6,
            test_acc=test_acc,
            best_valid_acc=max(valid_accs),
            num_params=num_params(config),
            train_time_s=sum(epoch_times),
            **timings,
        ).metrics()
        metrics += [Metric(key, float(value), timestamp, 0) for key, value in final.items()]
    return metrics, max(valid_accs)


def log_trial(
    client: MlflowClient,
    experiment_id: str,
    config: TrainConfig,
    study: str,
    clock: Clock,
    parent_run_id: str | None = None,
    status: str = "FINISHED",
) -> tuple[str, float]:
    """One training run (a sweep trial when `parent_run_id` is given): its id and score."""
    tags = run_tags(config, study, CPU_FP32)  # the training side's own tags: no drift
    if parent_run_id is not None:
        tags |= {schema.TAG_ROLE: schema.ROLE_TRIAL, schema.TAG_PARENT_RUN_ID: parent_run_id}
    run = client.create_run(
        experiment_id, start_time=clock.tick(), tags=tags, run_name=config.run_name()
    )
    run_id = run.info.run_id
    metrics, best_valid_acc = fake_metrics(config, finished=status == "FINISHED")
    params = [Param(key, value) for key, value in config.to_params().items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    if status == "FINISHED":
        client.log_dict(run_id, {"config": config.to_params()}, schema.CONFIG_ARTIFACT)
        pixels = np.random.default_rng(config.seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        client.log_image(run_id, pixels, artifact_file=schema.WEIGHTS_FIGURE_ARTIFACT)
    client.set_terminated(run_id, status=status, end_time=clock.tick(60))
    return run_id, best_valid_acc


def log_sweep(
    client: MlflowClient,
    experiment_id: str,
    study: str,
    clock: Clock,
    seeds: int = 1,
    epochs: int | None = 3,
    reuse: Mapping[str, str] | None = None,
    failed_trials: int = 0,
    running: bool = False,
) -> FakeSweep:
    """One sweep of a built-in study; trials whose key is in `reuse` are reused, not re-run.

    The first `failed_trials` trials that run crash, which makes the sweep end FAILED, as a real
    sweep does; `running` leaves the parent run RUNNING (a sweep in progress).
    """
    spec = load_study(study)
    parent = client.create_run(
        experiment_id,
        start_time=clock.tick(),
        run_name=study,
        tags={
            schema.TAG_STUDY: study,
            schema.TAG_ROLE: schema.ROLE_SWEEP,
            schema.TAG_VARIED: ",".join(spec.varied),
        },
    )
    sweep = FakeSweep(parent.info.run_id)
    reuse = reuse or {}
    scores: dict[str, float] = {}
    for config in study_configs(study, seeds, epochs):
        key = config.trial_key()
        if key in reuse:
            sweep.trials[key] = reuse[key]
            sweep.reused.append(reuse[key])
            reused = client.get_run(reuse[key])
            scores[reuse[key]] = reused.data.metrics[schema.METRIC_BEST_VALID_ACC]
            continue
        status = "FAILED" if len(sweep.failed) < failed_trials else "FINISHED"
        run_id, score = log_trial(
            client, experiment_id, config, study, clock, sweep.parent_run_id, status
        )
        if status == "FAILED":
            sweep.failed.append(run_id)
        else:
            sweep.trials[key], scores[run_id] = run_id, score
    _summarise(client, sweep, study, scores, clock, seeds, spec.text)
    if not running:
        status = "FAILED" if sweep.failed else "FINISHED"
        client.set_terminated(sweep.parent_run_id, status=status, end_time=clock.tick(60))
    return sweep


def _summarise(
    client: MlflowClient,
    sweep: FakeSweep,
    study: str,
    scores: Mapping[str, float],
    clock: Clock,
    seeds: int,
    study_text: str,
) -> None:
    counts = {
        schema.METRIC_TRIALS_FINISHED: len(sweep.trials) - len(sweep.reused),
        schema.METRIC_TRIALS_FAILED: len(sweep.failed),
        schema.METRIC_TRIALS_REUSED: len(sweep.reused),
    }
    tags = {schema.TAG_REUSED_RUN_IDS: ",".join(sweep.reused)}
    if scores:
        best_run_id = max(scores, key=scores.__getitem__)
        counts[schema.METRIC_BEST_VALID_ACC] = scores[best_run_id]
        tags[schema.TAG_BEST_RUN_ID] = best_run_id
    client.log_batch(
        sweep.parent_run_id,
        metrics=[Metric(key, float(value), clock.now_ms, 0) for key, value in counts.items()],
        params=[Param("study", study), Param("seeds", str(seeds)), Param("executor", "local")],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    client.log_text(sweep.parent_run_id, study_text, schema.STUDY_ARTIFACT)


def log_all_studies(
    client: MlflowClient,
    experiment_id: str,
    clock: Clock,
    seeds: int = 1,
    epochs: int | None = 3,
    studies: Iterable[str] = schema.REPORT_STUDIES,
) -> dict[str, FakeSweep]:
    """One finished sweep of each study (short by default: tests need shapes, not length)."""
    return {
        study: log_sweep(client, experiment_id, study, clock, seeds, epochs) for study in studies
    }
