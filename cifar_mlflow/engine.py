"""The training engine: one model, one configuration, epochs reported through callbacks.

It never imports MLflow; `cifar_mlflow.tracking` turns the callbacks into MLflow calls, so the
loop runs and is tested without any tracking server.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import DeviceData, Split, augment
from cifar_mlflow.models import build_model, count_parameters

EVAL_BATCH_SIZE = 1_000
INFERENCE_REPEATS = 3  # timed forward passes over the valid split, after one warm-up


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
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
    test_loss: float
    test_acc: float
    best_valid_acc: float
    num_params: int
    train_epoch_time_s: float
    inference_time_s: float
    train_images_per_s: float
    inference_images_per_s: float


class Callback:
    """Hooks the engine calls; subclasses override what they need."""

    def on_train_start(self, model: nn.Module, num_epochs: int, batches_per_epoch: int) -> None:
        pass

    def on_batch_end(self) -> None:
        pass

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        pass

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        pass


@dataclass(frozen=True)
class Environment:
    """How to run on a device: autocast dtype, memory format, synchronisation."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = full fp32
    memory_format: torch.memory_format

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, else MPS, else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def environment_for(config: TrainConfig) -> Environment:
    device = resolve_device(config.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        # TF32 for any matmul left in fp32; bf16 autocast covers the rest.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    channels_last = on_cuda and config.model == "resnet18"
    return Environment(
        device=device,
        amp_dtype=torch.bfloat16 if on_cuda else None,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )


def build_optimizer(
    config: TrainConfig, model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` names; weight decay is honoured by all four.

    `momentum` is SGD's momentum for `momentum` and Adam's beta1 for `adam`/`adamw`.
    """
    params = model.parameters()
    fused = {"fused": True} if device.type == "cuda" else {}
    if config.optimizer in ("sgd", "momentum"):
        momentum = config.momentum if config.optimizer == "momentum" else 0.0
        return torch.optim.SGD(
            params, lr=config.lr, momentum=momentum, weight_decay=config.weight_decay, **fused
        )
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return optimizer_class(
        params,
        lr=config.lr,
        betas=(config.momentum, 0.999),
        weight_decay=config.weight_decay,
        **fused,
    )


def batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of a split; shuffled when a generator is given."""
    if generator is None:
        order = torch.arange(len(split), device=split.labels.device)
    else:
        order = torch.randperm(len(split), device=split.labels.device, generator=generator)
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield split.images[index], split.labels[index]


@torch.inference_mode()
def evaluate(
    model: nn.Module, split: Split, env: Environment, batch_size: int = EVAL_BATCH_SIZE
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `split`, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=env.device)
    correct = torch.zeros((), device=env.device, dtype=torch.long)
    for images, labels in batches(split, batch_size):
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
        for images, _ in batches(split, EVAL_BATCH_SIZE):
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
    for images, labels in batches(split, config.batch_size, generator):
        images = augment(images, generator)
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


def fit(
    config: TrainConfig,
    data: DeviceData,
    env: Environment,
    callbacks: Sequence[Callback] = (),
) -> tuple[nn.Module, FinalMetrics]:
    """Train `config` on `data`: epochs of train + valid, then the test split once."""
    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes).to(env.device, memory_format=env.memory_format)
    optimizer = build_optimizer(config, model, env.device)
    # Batch order and augmentation draw from their own stream, so they are the same for a
    # seed whatever the model's initialisation consumed.
    generator = torch.Generator(env.device).manual_seed(config.seed)
    batches_per_epoch = -(-len(data.train) // config.batch_size)
    for callback in callbacks:
        callback.on_train_start(model, config.epochs, batches_per_epoch)

    epoch_times: list[float] = []
    best_valid_acc = 0.0
    for epoch in range(1, config.epochs + 1):
        env.synchronize()
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, optimizer, data.train, config, env, generator, callbacks
        )
        epoch_times.append(time.perf_counter() - start)  # train_one_epoch ended with a sync
        valid_loss, valid_acc = evaluate(model, data.valid, env)
        best_valid_acc = max(best_valid_acc, valid_acc)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            valid_loss=valid_loss,
            valid_acc=valid_acc,
            epoch_time_s=epoch_times[-1],
            lr=optimizer.param_groups[0]["lr"],
        )
        for callback in callbacks:
            callback.on_epoch_end(metrics)

    # The first epoch pays for warm-up (allocator, cuDNN autotuning), so it is left out.
    train_epoch_time = statistics.median(epoch_times[1:] or epoch_times)
    valid_time = inference_time(model, data.valid, env)
    test_loss, test_acc = evaluate(model, data.test, env)
    final = FinalMetrics(
        test_loss=test_loss,
        test_acc=test_acc,
        best_valid_acc=best_valid_acc,
        num_params=count_parameters(model),
        train_epoch_time_s=train_epoch_time,
        inference_time_s=valid_time,
        train_images_per_s=len(data.train) / train_epoch_time,
        inference_images_per_s=len(data.valid) / valid_time,
    )
    for callback in callbacks:
        callback.on_train_end(model, final)
    return model, final
