"""Names of the tracking schema (SPEC §5): the contract between training, sweeps and analysis.

Every tag, metric and artifact name that more than one module reads or writes lives here, so
that the training side and the analysis side cannot drift apart. The metric records are
defined once, as dataclasses; every list of metric names is derived from them. No torch here:
the analysis imports this module too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DEFAULT_EXPERIMENT = "cifar10"
# MLflow 3's UI opens an experiment without this tag in its GenAI view, hiding training runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Tags of every training run.
TAG_STUDY = "study"
TAG_MODEL = "model"
TAG_TRIAL_KEY = "trial_key"
TAG_SEED = "seed"
TAG_TORCH_DEVICE = "torch_device"  # the device actually used when `device=auto`
TAG_TORCH_PRECISION = "torch_precision"  # fp32, tf32 or bf16: how matmuls actually ran
TAG_UNUSED_PARAMS = "unused_params"  # options that have no effect for this model/optimiser
TAG_FAILURE_REASON = "failure_reason"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
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
METRIC_BEST_VALID_ACC = "best_valid_acc"  # the best trial's, on the parent run
# Searched studies (issue 14): a trial stopped early ends FINISHED with this tag (no test
# metrics, no model); its trials carry their number in the search and the search's key.
TAG_STOPPED_AT_EPOCH = "stopped_at_epoch"
TAG_STOPPED_REASON = "stopped_reason"  # the pruner's comparison, e.g. "valid_acc 0.31 below…"
TAG_TRIAL_NUMBER = "trial_number"  # 1-based, counted over every sweep of the search
TAG_SEARCH_KEY = "search_key"  # hash of the search space, its rules and the fixed trial
METRIC_TRIALS_STOPPED = "trials_stopped"
STUDY_ARTIFACT = "study.yaml"


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

# Built-in studies, in the order of the source report.
BUILTIN_STUDIES = ("activation", "lr", "patch", "best_resnet", "best_mixer")

# The Model Registry: a study's best trial is the version `champion` of `cifar10-<study>`.
REGISTERED_MODEL_PREFIX = "cifar10-"
CHAMPION_ALIAS = "champion"
# Tags of a registered version, besides `study`, `model` and `trial_key` (and the metrics
# `best_valid_acc` and `test_acc`, copied as tags: the registry keeps no metrics).
TAG_SOURCE_RUN_ID = "source_run_id"
VERSION_METRICS = ("best_valid_acc", "test_acc")
