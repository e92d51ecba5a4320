"""The training engine: one model, one configuration, epochs reported through callbacks.

It never imports MLflow; `cifar_mlflow.tracking` turns the callbacks into MLflow calls, so the
loop runs and is tested without any tracking server.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cifar_mlflow import schema
from cifar_mlflow.augmentation import augment
from cifar_mlflow.checkpoint import (
    CheckpointWriter,
    TrainingState,
    global_random_state,
    restore_training_state,
)
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import DeviceData, Split
from cifar_mlflow.environment import Environment, with_torch_settings
from cifar_mlflow.errors import DivergedLossError, NonFiniteLossError
from cifar_mlflow.eval_memory import with_eval_batch_for_memory
from cifar_mlflow.models import build_model, count_parameters
from cifar_mlflow.optimizers import build_optimizer
from cifar_mlflow.schema import EpochMetrics, FinalMetrics

DIVERGED_LOSS_FACTOR = 100.0  # × the chance-level loss; see `fit`
INFERENCE_REPEATS = 3  # timed forward passes over the valid split, after one warm-up


class Callback:
    """Hooks the engine calls; subclasses override what they need.

    The engine alone orders the calls, so the order of a callback list never matters:
    `on_train_start` (with the epochs a resumed run already completed), then per batch
    `on_batch_end`, per epoch `on_epoch_end` — after the epoch's state is held for its
    checkpoint and before that checkpoint's write starts — then `on_test_start` once the final
    model's inference time is measured, and `on_train_end` with the final metrics.

    A callback stops training early by raising `StopTraining` in `on_epoch_end`: every callback
    still gets that epoch, then `on_train_stopped` replaces the test split and `on_train_end`.
    """

    def on_train_start(
        self,
        model: nn.Module,
        num_epochs: int,
        batches_per_epoch: int,
        completed: Sequence[EpochMetrics],
    ) -> None:
        """`completed`: epochs restored from a checkpoint; training goes on after them."""

    def on_batch_end(self) -> None:
        pass

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        pass

    def on_test_start(self, model: nn.Module) -> None:
        """`model` is final (the inference speed is measured); the test split is next."""

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        pass

    def on_train_stopped(self, epoch: int, reason: str) -> None:
        """A callback stopped training after `epoch` for `reason` (its `StopTraining`'s
        message): no test split, no final metrics."""


class StopTraining(Exception):
    """Raised by a callback's `on_epoch_end` to end training after that epoch (early stopping)."""


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of a split; shuffled when a generator is given, else views in order."""
    if generator is None:
        for start in range(0, len(split), batch_size):
            end = start + batch_size
            yield split.images[start:end], split.labels[start:end]
        return
    order = torch.randperm(len(split), device=split.labels.device, generator=generator)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield split.images[index], split.labels[index]


def training_batches(
    split: Split, batch_size: int, generator: torch.Generator, env: Environment
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented mini-batches, augmented `env.augment_batches` batches at a time."""
    chunk_size = batch_size * env.augment_batches
    for chunk_images, chunk_labels in batches(split, chunk_size, generator):
        chunk_images = augment(chunk_images, generator).contiguous(memory_format=env.memory_format)
        yield from batches(Split(chunk_images, chunk_labels), batch_size)


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, env: Environment) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `split`, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), device=env.device, dtype=torch.long)
    for images, labels in batches(split, env.eval_batch_size):
        with env.autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    return loss_sum.item() / len(split), correct.item() / len(split)


def timed(env: Environment, work: Callable[[], object]) -> float:
    """Wall time of `work`, synchronising the device before and after."""
    env.synchronize()
    start = time.perf_counter()
    work()
    env.synchronize()
    return time.perf_counter() - start


def inference_time(model: nn.Module, split: Split, env: Environment) -> float:
    """Median eval-mode forward time over the whole split, after a warm-up pass."""
    model.eval()

    @torch.inference_mode()
    def forward_all() -> None:
        for images, _ in batches(split, env.eval_batch_size):
            with env.autocast():
                model(images)

    forward_all()
    return statistics.median(timed(env, forward_all) for _ in range(INFERENCE_REPEATS))


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    config: TrainConfig,
    env: Environment,
    generator: torch.Generator,
    callbacks: Sequence[Callback],
) -> tuple[float, float]:
    """One pass over the train split; returns mean loss and accuracy, synchronising once."""
    model.train()
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), device=env.device, dtype=torch.long)
    for images, labels in training_batches(split, config.batch_size, generator, env):
        with env.autocast():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulate on the device: no host sync (.item()) inside the epoch.
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        for callback in callbacks:
            callback.on_batch_end()
    return loss_sum.item() / len(split), correct.item() / len(split)


@dataclass
class _Training:
    """What `fit` carries from one epoch to the next."""

    config: TrainConfig
    data: DeviceData
    env: Environment
    model: nn.Module  # what callbacks and the caller get
    forward: nn.Module  # what trains and evaluates: `model` itself or its compiled wrapper
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # batch order and augmentation
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)


@with_torch_settings
def fit(
    config: TrainConfig,
    data: DeviceData,
    env: Environment,
    callbacks: Sequence[Callback] = (),
    resume: TrainingState | None = None,
    checkpoint: Path | None = None,
) -> tuple[nn.Module, FinalMetrics | None]:
    """Train `config` on `data`: epochs of train + valid, then the test split once.

    The final metrics are None when a callback stopped training early (`StopTraining`).

    With `checkpoint`, each epoch's state is written there (see `CheckpointWriter`). With
    `resume`, training continues after the checkpointed epoch exactly as if it had never
    stopped: weights, optimiser state and the random streams are restored.
    """
    run = _set_up(config, data, env, resume)
    completed = [EpochMetrics(**epoch) for epoch in run.history]
    batches_per_epoch = -(-len(data.train) // config.batch_size)
    for callback in callbacks:
        callback.on_train_start(run.model, config.epochs, batches_per_epoch, completed)
    writer = CheckpointWriter(checkpoint) if checkpoint is not None else None
    with writer or contextlib.nullcontext():
        for epoch in range(len(run.history) + 1, config.epochs + 1):
            metrics = _train_epoch(run, epoch, callbacks)
            # Held before reporting, so that an epoch the server has seen is resumable; written
            # after, so that the write does not delay the reports.
            if writer is not None:
                writer.hold(_training_state(run, epoch))
            stop_reason = _report_epoch(metrics, callbacks)
            if writer is not None:
                writer.start_write()
            if stop_reason is not None:
                for callback in callbacks:
                    callback.on_train_stopped(epoch, stop_reason)
                return run.model, None
    return run.model, _test(run, callbacks)


def _set_up(
    config: TrainConfig, data: DeviceData, env: Environment, resume: TrainingState | None
) -> _Training:
    """The model, its optimiser and random streams: new for `config.seed`, or as resumed."""
    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes).to(env.device, memory_format=env.memory_format)
    env = with_eval_batch_for_memory(env, model, data.valid.images[:1])
    optimizer = build_optimizer(config, model, env.device)
    # Batch order and augmentation draw from their own stream, so they are the same for a
    # seed whatever the model's initialisation consumed.
    generator = torch.Generator(env.device).manual_seed(config.seed)
    run = _Training(config, data, env, model, env.compiled(model), optimizer, generator)
    if resume is not None:
        restore_training_state(resume, model, optimizer, generator, config.seed)
        run.history, run.epoch_times = list(resume.history), list(resume.epoch_times)
    return run


def _train_epoch(run: _Training, epoch: int, callbacks: Sequence[Callback]) -> EpochMetrics:
    """Train and validate one epoch; a diverged loss stops training before validation."""
    run.env.synchronize()
    start = time.perf_counter()
    train_loss, train_acc = train_one_epoch(
        run.forward, run.optimizer, run.data.train, run.config, run.env, run.generator, callbacks
    )
    run.epoch_times.append(time.perf_counter() - start)  # train_one_epoch ended with a sync
    # Far beyond chance level (ln of the class count): the weights have blown up. With Adam the
    # loss can stay finite there (1e12 and more), so finiteness alone does not catch it.
    diverged_loss = DIVERGED_LOSS_FACTOR * math.log(run.data.num_classes)
    check_diverged(train_loss, diverged_loss, epoch, run.config.lr)
    valid_loss, valid_acc = evaluate(run.forward, run.data.valid, run.env)
    metrics = EpochMetrics(
        epoch=epoch,
        train_loss=train_loss,
        train_acc=train_acc,
        valid_loss=valid_loss,
        valid_acc=valid_acc,
        epoch_time_s=run.epoch_times[-1],
        lr=run.optimizer.param_groups[0]["lr"],
    )
    run.history.append(asdict(metrics))
    return metrics


def _training_state(run: _Training, epoch: int) -> TrainingState:
    return TrainingState(
        epoch=epoch,
        model=run.model.state_dict(),
        optimizer=run.optimizer.state_dict(),
        generator=run.generator.get_state(),
        history=run.history,
        epoch_times=run.epoch_times,
        device_type=run.env.device.type,
        **global_random_state(),
    )


def _report_epoch(metrics: EpochMetrics, callbacks: Sequence[Callback]) -> str | None:
    """Every callback gets the epoch; the reason one of them gave for stopping training, if any."""
    stop_reason = None
    for callback in callbacks:
        try:
            callback.on_epoch_end(metrics)
        except StopTraining as stop:
            stop_reason = str(stop)
    return stop_reason


def _test(run: _Training, callbacks: Sequence[Callback]) -> FinalMetrics:
    """Time the final model, evaluate it on the test split and report the final metrics."""
    # The first epoch pays for warm-up (allocator, cuDNN autotuning, compiling), so it is left out.
    train_epoch_time = statistics.median(run.epoch_times[1:] or run.epoch_times)
    valid_time = inference_time(run.forward, run.data.valid, run.env)
    # After the timing: what callbacks start with the final model (uploads) must not slow it.
    for callback in callbacks:
        callback.on_test_start(run.model)
    test_loss, test_acc = evaluate(run.forward, run.data.test, run.env)
    valid_accs = (epoch[schema.METRIC_VALID_ACC] for epoch in run.history)
    final = FinalMetrics(
        test_loss=test_loss,
        test_acc=test_acc,
        best_valid_acc=max(valid_accs, default=0.0),
        num_params=count_parameters(run.model),
        train_epoch_time_s=train_epoch_time,
        train_time_s=sum(run.epoch_times),
        inference_time_s=valid_time,
        train_images_per_s=len(run.data.train) / train_epoch_time,
        inference_images_per_s=len(run.data.valid) / valid_time,
    )
    for callback in callbacks:
        callback.on_train_end(run.model, final)
    return final


def check_diverged(train_loss: float, diverged_loss: float, epoch: int, lr: float) -> None:
    """Stop a run whose loss is non-finite or far above chance level, each with its reason."""
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({train_loss}) in epoch {epoch}; lower lr (now {lr:g})"
        )
    if train_loss > diverged_loss:
        raise DivergedLossError(
            f"training loss diverged ({train_loss:.4g} > {diverged_loss:.4g}, "
            f"{DIVERGED_LOSS_FACTOR:g} × chance level) in epoch {epoch}; lower lr (now {lr:g})"
        )
