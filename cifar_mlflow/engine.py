"""The training engine: one model, one configuration, epochs reported through callbacks.

It never imports MLflow; `cifar_mlflow.tracking` turns the callbacks into MLflow calls, so the
loop runs and is tested without any tracking server.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifar_mlflow.checkpoint import TrainingState, save_checkpoint
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import DeviceData, Split, augment
from cifar_mlflow.errors import TrainingError
from cifar_mlflow.models import build_model, count_parameters

# Evaluation batch: large on a GPU, where a small model would otherwise wait on kernel launches.
# On a CPU, 128 images keep the activations of ResNet18 and the Mixer in cache (their inference
# measured 10-25 % slower at 1,000 on a 2-core EPYC); the MLP's activations are small at any size.
EVAL_BATCH_SIZE = 1_000
GPU_EVAL_BATCH_SIZE = 5_000  # the whole valid split in one forward pass
CPU_CACHE_EVAL_BATCH_SIZE = 128
GPU_AUGMENT_BATCHES = 64  # training batches augmented per call on a GPU: fewer, larger launches
DIVERGED_LOSS_FACTOR = 100.0  # × the chance-level loss; see `fit`
INFERENCE_REPEATS = 3  # timed forward passes over the valid split, after one warm-up
CONV_MODELS = ("resnet18", "mlpmixer")  # models whose first layer is a convolution


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

    def on_checkpoint(self, state: TrainingState) -> None:
        pass

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        pass

    def on_test_start(self, model: nn.Module) -> None:
        """`model` is final (the inference speed is measured); the test split is next."""

    def on_train_end(self, model: nn.Module, metrics: FinalMetrics) -> None:
        pass


class NonFiniteLossError(TrainingError):
    """The loss diverged; training cannot recover from it."""


class CheckpointCallback(Callback):
    """Writes each epoch's state to `path`, replacing the previous one atomically.

    The write runs in a background thread while the next epoch trains: it takes 50-100 ms for
    the MLP on a CPU and longer for ResNet18's 11 M parameters, paid every epoch. Only the copy
    of the state (a memory copy, off the GPU) is paid in the loop. The write starts in this
    callback's `on_epoch_end`: put it last, so that pickling the state does not hold the GIL
    while the others report the epoch. Until a write lands, the previous checkpoint stands; a
    run killed then repeats one epoch when resumed, with the same result, and logs none of its
    metrics twice. Use it as a context manager: leaving writes the last state and waits for
    it, whether training ended or raised.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._unwritten: TrainingState | None = None
        self._pending: Future | None = None

    def on_checkpoint(self, state: TrainingState) -> None:
        self.wait()
        # A copy: the training goes on changing the weights and the optimiser state in place.
        self._unwritten = TrainingState(**_copy_to_cpu(vars(state)))

    def on_epoch_end(self, metrics: EpochMetrics) -> None:
        self._start_write()

    def _start_write(self) -> None:
        if self._unwritten is not None:
            state, self._unwritten = self._unwritten, None
            self._pending = self._writer.submit(save_checkpoint, self.path, state)

    def wait(self) -> None:
        """Block until the last checkpoint is on disk; raises if writing it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> CheckpointCallback:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._start_write()
        self.wait()
        self._writer.shutdown()


def _copy_to_cpu(value: Any) -> Any:
    """`value` with every tensor copied to the CPU and every container copied."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copy_to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copy_to_cpu(item) for item in value)
    return value


@dataclass(frozen=True)
class Environment:
    """How to run a model on a device: precision, memory format, batching, compilation."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = full fp32
    memory_format: torch.memory_format
    eval_batch_size: int = EVAL_BATCH_SIZE
    augment_batches: int = 1  # training batches augmented together by one `augment` call
    compile: bool = False  # torch.compile the model; compiling is paid in the first epoch

    def compiled(self, model: nn.Module) -> nn.Module:
        """`model`, or with `compile` a compiled wrapper that shares its parameters."""
        # Static shapes: an epoch sees two batch sizes (full and last) and evaluation one or
        # two, so a few specialised graphs beat one dynamic graph for every batch.
        return torch.compile(model, dynamic=False) if self.compile else model

    @property
    def precision(self) -> str:
        return "fp32" if self.amp_dtype is None else "bf16"

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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16, AMX, Arm BF16).

    Elsewhere oneDNN emulates bf16 and autocast is slower than fp32. Linux only says so in
    /proc/cpuinfo; other systems are treated as without.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def uses_bf16(precision: str, device: torch.device) -> bool:
    """What `precision` means on `device`: `auto` is bf16 where it is native, else fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def environment_for(config: TrainConfig, compile: bool = False) -> Environment:
    """The fastest known way to run `config` on its device; `compile` adds torch.compile.

    bf16 autocast (`config.precision`) halves the training time of all three models on a GPU
    and on a CPU with native bf16; the loss, softmax and optimiser state stay in fp32.
    """
    device = resolve_device(config.device)
    on_cuda = device.type == "cuda"
    if on_cuda:
        # TF32 for any matmul left in fp32; bf16 autocast covers the rest.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    # Channels-last convolutions: ResNet18 trains ~15 % faster with oneDNN on a CPU, cuDNN feeds
    # tensor cores with them, and the Mixer's stem then emits its tokens without a copy.
    channels_last = config.model in CONV_MODELS and device.type in ("cpu", "cuda")
    if device.type != "cpu":
        eval_batch_size = GPU_EVAL_BATCH_SIZE
    elif config.model in CONV_MODELS:
        eval_batch_size = CPU_CACHE_EVAL_BATCH_SIZE
    else:
        eval_batch_size = EVAL_BATCH_SIZE
    return Environment(
        device=device,
        amp_dtype=torch.bfloat16 if uses_bf16(config.precision, device) else None,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        eval_batch_size=eval_batch_size,
        # On a CPU one batch at a time stays in cache; a GPU prefers fewer, larger launches.
        augment_batches=1 if device.type == "cpu" else GPU_AUGMENT_BATCHES,
        compile=compile,
    )


def build_optimizer(
    config: TrainConfig, model: nn.Module, device: torch.device
) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` names; weight decay is honoured by all four.

    `momentum` is SGD's momentum for `momentum` and Adam's beta1 for `adam`/`adamw`.
    """
    params = model.parameters()
    # One fused kernel per step instead of a few per parameter: on a CPU, AdamW's step over the
    # MLP's 3.7 M parameters takes 2.3 ms fused against 8 ms with the default `foreach`.
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
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


def fit(
    config: TrainConfig,
    data: DeviceData,
    env: Environment,
    callbacks: Sequence[Callback] = (),
    resume: TrainingState | None = None,
) -> tuple[nn.Module, FinalMetrics]:
    """Train `config` on `data`: epochs of train + valid, then the test split once.

    With `resume`, training continues after the checkpointed epoch exactly as if it had never
    stopped: weights, optimiser state and both random streams are restored.
    """
    torch.manual_seed(config.seed)
    model = build_model(config, data.num_classes).to(env.device, memory_format=env.memory_format)
    optimizer = build_optimizer(config, model, env.device)
    # Training and evaluation go through `forward`; callbacks and the caller get `model` itself.
    forward = env.compiled(model)
    # Batch order and augmentation draw from their own stream, so they are the same for a
    # seed whatever the model's initialisation consumed.
    generator = torch.Generator(env.device).manual_seed(config.seed)
    history: list[dict[str, float]] = []
    epoch_times: list[float] = []
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        torch.set_rng_state(resume.torch_rng)
        history, epoch_times = list(resume.history), list(resume.epoch_times)
    batches_per_epoch = -(-len(data.train) // config.batch_size)
    for callback in callbacks:
        callback.on_train_start(model, config.epochs, batches_per_epoch)

    best_valid_acc = max((epoch["valid_acc"] for epoch in history), default=0.0)
    # Far beyond chance level (ln of the class count): the weights have blown up. With Adam the
    # loss can stay finite there (1e12 and more), so finiteness alone does not catch it.
    diverged_loss = DIVERGED_LOSS_FACTOR * math.log(data.num_classes)
    for epoch in range(len(history) + 1, config.epochs + 1):
        env.synchronize()
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            forward, optimizer, data.train, config, env, generator, callbacks
        )
        epoch_times.append(time.perf_counter() - start)  # train_one_epoch ended with a sync
        if not math.isfinite(train_loss) or train_loss > diverged_loss:
            raise NonFiniteLossError(
                f"non-finite or diverged training loss ({train_loss:.4g} in epoch {epoch}); "
                f"lower lr (now {config.lr:g})"
            )
        valid_loss, valid_acc = evaluate(forward, data.valid, env)
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
        history.append(asdict(metrics))
        # Checkpoint before reporting, so that an epoch the server has seen is resumable.
        state = TrainingState(
            epoch=epoch,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            generator=generator.get_state(),
            torch_rng=torch.get_rng_state(),
            history=history,
            epoch_times=epoch_times,
        )
        for callback in callbacks:
            callback.on_checkpoint(state)
        for callback in callbacks:
            callback.on_epoch_end(metrics)

    # The first epoch pays for warm-up (allocator, cuDNN autotuning, compiling), so it is left out.
    train_epoch_time = statistics.median(epoch_times[1:] or epoch_times)
    valid_time = inference_time(forward, data.valid, env)
    # After the timing: what callbacks start with the final model (uploads) must not slow it.
    for callback in callbacks:
        callback.on_test_start(model)
    test_loss, test_acc = evaluate(forward, data.test, env)
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
