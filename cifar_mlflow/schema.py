"""Names of the tracking schema (docs/tracking-schema.md): training, sweeps and analysis share them.

Every tag, metric and artifact name that more than one module reads or writes lives here, so
that the training side and the analysis side cannot drift apart. The metric records are
defined once, as dataclasses; every list of metric names is derived from them. No torch here:
the analysis imports this module too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

DEFAULT_EXPERIMENT = "cifar10"
# MLflow 3's UI opens an experiment without this tag in its GenAI view, hiding training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Tags of every training run.
TAG_STUDY = "study"
TAG_MODEL = "model"
TAG_TRIAL_KEY = "trial_key"
TAG_SEED_GROUP = "seed_group"  # the trial key without the seed: the runs a setting's stats use
TAG_SEED = "seed"
TAG_TORCH_DEVICE = "torch_device"  # the device actually used when `device=auto`
TAG_TORCH_PRECISION = "torch_precision"  # fp32, tf32 or bf16: how matmuls actually ran
TAG_UNUSED_PARAMS = "unused_params"  # options that have no effect for this model/optimiser
TAG_FAILURE_REASON = "failure_reason"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"  # MLflow's: set also on runs `mlflow run` created unnamed
TAG_RESUMED_RUN_ID = "resumed_run_id"  # on the run `mlflow run -P resume=ID` created
NO_STUDY = "none"

# Tags and metrics of a sweep's parent run.
TAG_ROLE = "role"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
TAG_VARIED = "varied"  # comma-separated config fields the study's grid varies
TAG_REUSED_RUN_IDS = "reused_run_ids"  # comma-separated finished trials of earlier sweeps
TAG_BEST_RUN_ID = "best_run_id"
METRIC_TRIALS_FINISHED = "trials_finished"
METRIC_TRIALS_FAILED = "trials_failed"
METRIC_TRIALS_REUSED = "trials_reused"
METRIC_BEST_VALID_ACC = "best_valid_acc"  # a run's best epoch; on a parent, its best trial's
# Searched studies (issue 14): a trial stopped early ends FINISHED with this tag (no test
# metrics, no model); its trials carry their number in the search and the search's key.
TAG_STOPPED_AT_EPOCH = "stopped_at_epoch"
TAG_STOPPED_REASON = "stopped_reason"  # the pruner's comparison, e.g. "valid_acc 0.31 below…"
TAG_TRIAL_NUMBER = "trial_number"  # 1-based, counted over every sweep of the search
TAG_SEARCH_KEY = "search_key"  # hash of the search space, its rules and the fixed trial
METRIC_TRIALS_STOPPED = "trials_stopped"
STUDY_ARTIFACT = "study.yaml"


# The name of each metric of a training run, for code that names one; `EpochMetrics` and
# `FinalMetrics` below declare the same names as fields (tests/test_structure.py checks it).
METRIC_TRAIN_LOSS = "train_loss"
METRIC_TRAIN_ACC = "train_acc"
METRIC_VALID_LOSS = "valid_loss"
METRIC_VALID_ACC = "valid_acc"
METRIC_EPOCH_TIME_S = "epoch_time_s"
METRIC_LR = "lr"
METRIC_TEST_LOSS = "test_loss"
METRIC_TEST_ACC = "test_acc"
METRIC_NUM_PARAMS = "num_params"
METRIC_TRAIN_EPOCH_TIME_S = "train_epoch_time_s"
METRIC_TRAIN_TIME_S = "train_time_s"
METRIC_INFERENCE_TIME_S = "inference_time_s"
METRIC_TRAIN_IMAGES_PER_S = "train_images_per_s"
METRIC_INFERENCE_IMAGES_PER_S = "inference_images_per_s"


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's report; every field but `epoch` is a metric logged with step = epoch."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # fraction in [0, 1]
    valid_loss: float
    valid_acc: float
    epoch_time_s: float  # the training pass alone, device-synchronised
    lr: float

    def metrics(self) -> dict[str, float]:
        values = asdict(self)
        del values["epoch"]
        return values


@dataclass(frozen=True)
class FinalMetrics:
    """Logged once, at the end of a run (step 0)."""

    test_loss: float
    test_acc: float
    best_valid_acc: float  # the best epoch's valid_acc, what sweeps rank trials by
    num_params: int
    train_epoch_time_s: float  # median training pass over the epochs after the first
    train_time_s: float  # every epoch's training pass, summed: the compute the run spent
    inference_time_s: float  # eval forward pass over the valid split, median after a warm-up
    train_images_per_s: float
    inference_images_per_s: float

    def metrics(self) -> dict[str, float]:
        return asdict(self)


EPOCH_METRICS = tuple(f.name for f in fields(EpochMetrics) if f.name != "epoch")
FINAL_METRICS = tuple(f.name for f in fields(FinalMetrics))

# Artifacts of every training run.
WEIGHTS_FIGURE_ARTIFACT = "figures/weights.png"
CONFIG_ARTIFACT = "config.json"
MODEL_NAME = "model"

# The built-in study files, shipped inside the package (a wheel has them too). A checkout's
# top-level `studies` is a link to this folder, for users who copy one to edit it.
BUILTIN_STUDY_DIR = Path(__file__).resolve().parent / "builtin_studies"


def builtin_studies() -> tuple[str, ...]:
    """The built-in studies' names, found in their folder: what help, errors and docs list."""
    return tuple(sorted(path.stem for path in BUILTIN_STUDY_DIR.glob("*.yaml")))


# The built-in studies the report's figures and tables come from, in the source report's order
# (the searched ones have their own section).
REPORT_STUDIES = ("activation", "lr", "patch", "best_resnet", "best_mixer")

# The Model Registry: a study's best trial is the version `champion` of `cifar10-<study>`.
REGISTERED_MODEL_PREFIX = "cifar10-"
CHAMPION_ALIAS = "champion"
# Tags of a registered version, besides `study`, `model` and `trial_key` (and the metrics
# `best_valid_acc` and `test_acc`, copied as tags: the registry keeps no metrics).
TAG_SOURCE_RUN_ID = "source_run_id"
# MLflow's own field of a logged model (a search filter field), spelled like the tag above.
LOGGED_MODEL_SOURCE_RUN = TAG_SOURCE_RUN_ID
VERSION_METRICS = (METRIC_BEST_VALID_ACC, METRIC_TEST_ACC)
# The evidence a sweep's champion decision had (issue 24): the challenger's lead over the
# champion it replaced in best_valid_acc (mean over seeds), Welch's 95 % interval, the seeds.
TAG_EVIDENCE_DIFFERENCE = "evidence_difference"
TAG_EVIDENCE_CI_LOW = "evidence_ci_low"
TAG_EVIDENCE_CI_HIGH = "evidence_ci_high"
TAG_EVIDENCE_SEEDS = "evidence_seeds"  # "challenger N, champion M"
TAG_EVIDENCE = "evidence"  # the decision in words, e.g. "1 seed: no interval, compared runs"
