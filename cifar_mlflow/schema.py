"""Names of the tracking schema (SPEC §5): the contract between training, sweeps and analysis.

Every tag, metric and artifact name that more than one module reads or writes lives here, so
that the training side and the analysis side cannot drift apart.
"""

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
TAG_TORCH_PRECISION = "torch_precision"  # fp32 or bf16, what `precision=auto` chose
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
METRIC_BEST_VALID_ACC = "best_valid_acc"
STUDY_ARTIFACT = "study.yaml"

# Per-epoch metrics, logged with step = epoch (1-based).
EPOCH_METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "epoch_time_s", "lr")
# Metrics logged once at the end of a run.
FINAL_METRICS = (
    "test_loss",
    "test_acc",
    "best_valid_acc",
    "num_params",
    "train_epoch_time_s",
    "inference_time_s",
    "train_images_per_s",
    "inference_images_per_s",
)

# Artifacts of every training run.
WEIGHTS_FIGURE_ARTIFACT = "figures/weights.png"
CONFIG_ARTIFACT = "config.json"
MODEL_NAME = "model"

# Built-in studies, in the order of the source report.
BUILTIN_STUDIES = ("activation", "lr", "patch", "best_resnet", "best_mixer")
