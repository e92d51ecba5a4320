"""Fake trials and sweeps, logged in exactly the shape a real sweep leaves in MLflow (SPEC §5).

A sweep is a parent run (run name = study, tags `study`, `role=sweep`, `varied`, `best_run_id`,
`reused_run_ids`; metrics `trials_*`, `best_valid_acc`; artifact `study.yaml`) whose trials are
nested child runs carrying every config field as a string param, the per-epoch metrics with
step = epoch and the final metrics. The curves and timings are synthetic but plausible, and
deterministic in the configuration, so tests can compare the analysis with what was logged.

Each run is written with one `log_batch` call, which keeps filling a server with hundreds of runs
fast (one REST round trip per run instead of one per metric).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from cifar_mlflow import schema

# Every config field, spelled the way the training CLI logs them.
DEFAULT_CONFIG: dict[str, str] = {
    "model": "mlp",
    "dataset": "cifar10",
    "data_dir": "data",
    "train_size": "50000",
    "activation": "relu",
    "mixer_activation": "gelu",
    "hidden_sizes": "1024,512,64,64",
    "patch_size": "4",
    "embed_dim": "256",
    "num_blocks": "4",
    "drop_rate": "0.0",
    "optimizer": "adamw",
    "lr": "0.001",
    "momentum": "0.9",
    "weight_decay": "0.0005",
    "batch_size": "128",
    "epochs": "15",
    "seed": "42",
    "device": "auto",
}


@dataclass(frozen=True)
class FakeStudy:
    """A built-in study: its model, the settings it fixes and the grid it varies."""

    model: str
    fixed: Mapping[str, str] = field(default_factory=dict)
    # Values as a user types them: "1e-3" next to "0.001" is deliberate (analysis must parse).
    grid: Mapping[str, Sequence[str]] = field(default_factory=dict)


STUDIES: dict[str, FakeStudy] = {
    "activation": FakeStudy("mlp", {"epochs": "20"}, {"activation": ("relu", "tanh", "sigmoid")}),
    "lr": FakeStudy(
        "resnet18",
        {"optimizer": "adam", "epochs": "15"},
        {"lr": ("0.1", "0.01", "1e-3", "0.0001", "1e-5")},
    ),
    "patch": FakeStudy("mlpmixer", {"epochs": "15"}, {"patch_size": ("2", "4", "8", "16")}),
    "best_resnet": FakeStudy(
        "resnet18", {"optimizer": "adam", "lr": "1e-3", "weight_decay": "5e-3", "epochs": "30"}
    ),
    "best_mixer": FakeStudy(
        "mlpmixer",
        {
            "embed_dim": "512",
            "num_blocks": "8",
            "drop_rate": "0.4",
            "optimizer": "adam",
            "lr": "1e-3",
            "weight_decay": "5e-4",
            "epochs": "30",
        },
    ),
}

# Options without effect for a model or optimiser, reported by training in tag `unused_params`.
UNUSED_BY_MODEL = {
    "mlp": ("mixer_activation", "patch_size", "embed_dim", "num_blocks", "drop_rate"),
    "resnet18": (
        "activation",
        "mixer_activation",
        "hidden_sizes",
        "patch_size",
        "embed_dim",
        "num_blocks",
        "drop_rate",
    ),
    "mlpmixer": ("activation", "hidden_sizes"),
}
MOMENTUM_OPTIMIZERS = ("sgd", "momentum")

TRAIN_IMAGES = 45_000
VALID_IMAGES = 5_000


@dataclass
class FakeSweep:
    """What one `log_sweep` call wrote: the parent run and its trials by trial key."""

    parent_run_id: str
    trials: dict[str, str]  # trial_key → run_id of every trial the sweep counts (run or reused)
    reused: list[str]
    failed: list[str]


class Clock:
    """Strictly increasing start times (ms), so "latest sweep" is well defined in tests."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.now_ms = start_ms if start_ms is not None else int(time.time() * 1000)

    def tick(self, seconds: float = 1.0) -> int:
        self.now_ms += int(seconds * 1000)
        return self.now_ms


def create_experiment(client: MlflowClient, name: str) -> str:
    """The experiment `name` (created when absent), tagged like the training CLI does."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, tags={schema.EXPERIMENT_KIND_TAG: schema.EXPERIMENT_KIND})


def trial_key(config: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:16]


def num_params(config: Mapping[str, str]) -> int:
    """Parameter counts of the SPEC §2 architectures, so Table 1 varies with the patch size."""
    model = config["model"]
    if model == "resnet18":
        return 11_173_962
    if model == "mlp":
        sizes = [3072, *(int(h) for h in config["hidden_sizes"].split(",")), 10]
        return sum(a * b + b for a, b in itertools.pairwise(sizes))
    dim, patch = int(config["embed_dim"]), int(config["patch_size"])
    tokens, token_hidden, channel_hidden = (32 // patch) ** 2, dim // 2, 4 * dim
    norms = 2 * 2 * dim
    token_mlp = 2 * tokens * token_hidden + token_hidden + tokens
    channel_mlp = 2 * dim * channel_hidden + channel_hidden + dim
    embedding, head = 3 * patch * patch * dim + dim, 2 * dim + 10 * dim + 10
    return embedding + int(config["num_blocks"]) * (norms + token_mlp + channel_mlp) + head


def _quality(config: Mapping[str, str]) -> float:
    """Final accuracy of a setting; seed-independent, so seeds of one setting agree closely."""
    setting = {k: v for k, v in config.items() if k != "seed"}
    spread = random.Random(trial_key(setting)).uniform(0.0, 0.08)
    lr_penalty = abs(math.log10(float(config["lr"])) + 3) * 0.08  # 1e-3 is best, as reported
    return max(0.2, 0.9 - spread - lr_penalty)


def _timings(config: Mapping[str, str], rng: random.Random) -> dict[str, float]:
    # Work grows with the token count for the Mixer: larger patches train and infer faster.
    work = {"mlp": 1.0, "resnet18": 20.0}.get(config["model"], 0.0)
    if config["model"] == "mlpmixer":
        work = 2.0 + (32 // int(config["patch_size"])) ** 2 / 16
    train = work * rng.uniform(0.97, 1.03)
    inference = work * 0.02 * rng.uniform(0.95, 1.05)
    return {
        "train_epoch_time_s": train,
        "inference_time_s": inference,
        "train_images_per_s": TRAIN_IMAGES / train,
        "inference_images_per_s": VALID_IMAGES / inference,
    }


def fake_metrics(config: Mapping[str, str], finished: bool = True) -> tuple[list[Metric], float]:
    """Per-epoch and final metrics of one trial, and its best valid accuracy."""
    rng = random.Random(trial_key(config))
    quality, epochs = _quality(config), int(config["epochs"])
    timestamp = int(time.time() * 1000)
    logged_epochs = epochs if finished else max(1, epochs // 3)
    timings = _timings(config, rng)
    metrics, valid_accs = [], []
    for epoch in range(1, logged_epochs + 1):
        progress = 1 - math.exp(-3 * epoch / epochs)
        train_acc = min(0.999, 0.1 + (quality + 0.05 - 0.1) * progress + rng.gauss(0, 0.005))
        valid_acc = min(0.999, 0.1 + (quality - 0.1) * progress + rng.gauss(0, 0.01))
        valid_accs.append(valid_acc)
        values = {
            "train_loss": -math.log(train_acc) * 1.5,
            "train_acc": train_acc,
            "valid_loss": -math.log(valid_acc) * 1.6,
            "valid_acc": valid_acc,
            "epoch_time_s": timings["train_epoch_time_s"] * rng.uniform(0.98, 1.02),
            "lr": float(config["lr"]),
        }
        metrics += [Metric(k, v, timestamp, epoch) for k, v in values.items()]
    best_valid_acc = max(valid_accs)
    if finished:
        test_acc = valid_accs[-1] + rng.gauss(0, 0.005)
        final = {
            "test_loss": -math.log(test_acc) * 1.6,
            "test_acc": test_acc,
            "best_valid_acc": best_valid_acc,
            "num_params": float(num_params(config)),
            **timings,
        }
        metrics += [Metric(k, v, timestamp, 0) for k, v in final.items()]
    return metrics, best_valid_acc


def unused_params(config: Mapping[str, str]) -> list[str]:
    unused = list(UNUSED_BY_MODEL[config["model"]])
    return unused if config["optimizer"] in MOMENTUM_OPTIMIZERS else [*unused, "momentum"]


def run_name(config: Mapping[str, str], varied: Iterable[str]) -> str:
    parts = [config["model"], *(f"{name}{config[name]}" for name in varied)]
    return "-".join([*parts, f"seed{config['seed']}"])


def log_trial(
    client: MlflowClient,
    experiment_id: str,
    config: Mapping[str, str],
    study: str,
    clock: Clock,
    parent_run_id: str | None = None,
    varied: Sequence[str] = (),
    status: str = "FINISHED",
    weights_figure: bool = False,
) -> tuple[str, float]:
    """Log one training run (a sweep trial when `parent_run_id` is given); its id and score."""
    tags = {
        schema.TAG_STUDY: study,
        schema.TAG_MODEL: config["model"],
        schema.TAG_TRIAL_KEY: trial_key(config),
        schema.TAG_SEED: config["seed"],
        schema.TAG_UNUSED_PARAMS: ",".join(unused_params(config)),
    }
    if parent_run_id is not None:
        tags |= {schema.TAG_ROLE: schema.ROLE_TRIAL, schema.TAG_PARENT_RUN_ID: parent_run_id}
    run = client.create_run(
        experiment_id, start_time=clock.tick(), tags=tags, run_name=run_name(config, varied)
    )
    run_id = run.info.run_id
    metrics, best_valid_acc = fake_metrics(config, finished=status == "FINISHED")
    params = [Param(k, v) for k, v in config.items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.log_dict(run_id, dict(config), schema.CONFIG_ARTIFACT)
    if weights_figure:
        pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        client.log_image(run_id, pixels, artifact_file=schema.WEIGHTS_FIGURE_ARTIFACT)
    client.set_terminated(run_id, status=status, end_time=clock.tick(60))
    return run_id, best_valid_acc


def study_configs(study: str, seeds: Sequence[int], epochs: int | None) -> list[dict[str, str]]:
    """The effective configuration of every trial of a study: grid x seeds."""
    spec = STUDIES[study]
    base = DEFAULT_CONFIG | {"model": spec.model} | dict(spec.fixed)
    if epochs is not None:
        base["epochs"] = str(epochs)
    grid = [
        dict(zip(spec.grid, values, strict=True))
        for values in itertools.product(*spec.grid.values())
    ]
    return [base | setting | {"seed": str(seed)} for setting in grid for seed in seeds]


def log_sweep(
    client: MlflowClient,
    experiment_id: str,
    study: str,
    clock: Clock,
    seeds: Sequence[int] = (42,),
    epochs: int | None = None,
    reuse: Mapping[str, str] | None = None,
    failed_trials: int = 0,
    running: bool = False,
) -> FakeSweep:
    """One sweep of a built-in study; trials whose key is in `reuse` are reused, not re-run."""
    varied = tuple(STUDIES[study].grid)
    parent = client.create_run(
        experiment_id,
        start_time=clock.tick(),
        run_name=study,
        tags={
            schema.TAG_STUDY: study,
            schema.TAG_ROLE: schema.ROLE_SWEEP,
            schema.TAG_VARIED: ",".join(varied),
        },
    )
    parent_id = parent.info.run_id
    reuse = reuse or {}
    sweep = FakeSweep(parent_id, {}, [], [])
    scores: dict[str, float] = {}
    for config in study_configs(study, seeds, epochs):
        key = trial_key(config)
        if key in reuse:
            sweep.trials[key] = reuse[key]
            sweep.reused.append(reuse[key])
            scores[reuse[key]] = client.get_run(reuse[key]).data.metrics["best_valid_acc"]
            continue
        # The first `failed_trials` trials that actually run crash after a few epochs.
        status = "FAILED" if len(sweep.failed) < failed_trials else "FINISHED"
        run_id, score = log_trial(
            client, experiment_id, config, study, clock, parent_id, varied, status, not varied
        )
        if status == "FAILED":
            sweep.failed.append(run_id)
        else:
            sweep.trials[key], scores[run_id] = run_id, score
    best_run_id = max(scores, key=scores.__getitem__)
    client.log_batch(
        parent_id,
        metrics=[
            Metric(schema.METRIC_TRIALS_FINISHED, len(sweep.trials), clock.now_ms, 0),
            Metric(schema.METRIC_TRIALS_FAILED, len(sweep.failed), clock.now_ms, 0),
            Metric(schema.METRIC_TRIALS_REUSED, len(sweep.reused), clock.now_ms, 0),
            Metric(schema.METRIC_BEST_VALID_ACC, scores[best_run_id], clock.now_ms, 0),
        ],
        tags=[
            RunTag(schema.TAG_BEST_RUN_ID, best_run_id),
            RunTag(schema.TAG_REUSED_RUN_IDS, ",".join(sweep.reused)),
        ],
    )
    study_yaml = f"name: {study}\nmodel: {STUDIES[study].model}\nseeds: {list(seeds)}\n"
    client.log_text(parent_id, study_yaml, schema.STUDY_ARTIFACT)
    if running:
        return sweep  # a sweep still in progress: not yet the study's latest finished sweep
    client.set_terminated(parent_id, end_time=clock.tick(60))
    return sweep


def log_all_studies(
    client: MlflowClient,
    experiment_id: str,
    clock: Clock,
    seeds: Sequence[int] = (42,),
    epochs: int | None = 3,
    studies: Iterable[str] = schema.BUILTIN_STUDIES,
) -> dict[str, FakeSweep]:
    """One finished sweep of each study (short by default: tests need shapes, not length)."""
    return {
        study: log_sweep(client, experiment_id, study, clock, seeds, epochs) for study in studies
    }
