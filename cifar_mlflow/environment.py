"""Where and how a configuration runs: device, precision, memory format, batching.

`check_machine` is the edge check for what the configuration asks of this machine (a device
that is absent, bf16 on a GPU without it, a checkpoint folder that cannot be written): it fails
in one line before any run exists. `environment_for` then picks the fastest known way to run
on that device.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cifar_mlflow.config import ConfigError, TrainConfig
from cifar_mlflow.models.registry import model_spec

# Evaluation batch: large on a GPU, where a small model would otherwise wait on kernel launches.
# On a CPU a model may ask for a smaller one that keeps its activations in cache (its presets).
EVAL_BATCH_SIZE = 1_000
GPU_EVAL_BATCH_SIZE = 5_000  # the whole valid split in one forward pass
GPU_AUGMENT_BATCHES = 64  # training batches augmented per call on a GPU: fewer, larger launches
# bf16 and TF32 tensor cores start with Ampere; `torch.cuda.is_bf16_supported()` also says yes
# on a V100 or T4, which only emulate bf16 (slower than fp32).
AMPERE = (8, 0)
CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
T = TypeVar("T")


@dataclass(frozen=True)
class Environment:
    """How to run a model on a device: precision, memory format, batching, compilation."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = full fp32
    memory_format: torch.memory_format
    eval_batch_size: int = EVAL_BATCH_SIZE
    augment_batches: int = 1  # training batches augmented together by one `augment` call
    compile: bool = False  # torch.compile the model; compiling is paid in the first epoch
    tf32: bool = False  # matmuls and convolutions left in fp32 run in TF32 (CUDA, Ampere on)
    deterministic: bool = False  # reproducible kernels, no cuDNN autotuning (`torch_settings`)

    def compiled(self, model: nn.Module) -> nn.Module:
        """`model`, or with `compile` a compiled wrapper that shares its parameters."""
        # Static shapes: an epoch sees two batch sizes (full and last) and evaluation one or
        # two, so a few specialised graphs beat one dynamic graph for every batch.
        # On CUDA the small models wait on kernel launches (the MLP: ~70 per step for ~25 µs of
        # work); "reduce-overhead" replays each step as one CUDA graph.
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        return torch.compile(model, dynamic=False, mode=mode) if self.compile else model

    @property
    def precision(self) -> str:
        if self.amp_dtype is not None:
            return "bf16"
        return "tf32" if self.tf32 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


def available_devices() -> tuple[str, ...]:
    """The device types this machine can train on."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return tuple(found)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, else MPS, else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_machine(config: TrainConfig) -> None:
    """Refuse, in one line, what `config` asks of this machine that it cannot do.

    Without this, an absent device, bf16 on a GPU without bf16 or an unwritable checkpoint
    folder fails only once the run exists, with a traceback.
    """
    available = available_devices()
    if config.device != "auto" and config.device not in available:
        raise ConfigError(
            f"device {config.device!r} is not available on this machine; "
            f"available: auto | {' | '.join(available)}"
        )
    device = resolve_device(config.device)
    if config.precision == "bf16" and device.type == "cuda" and not has_ampere_tensor_cores(device):
        raise ConfigError(
            "precision 'bf16' needs a GPU that computes bf16 (Ampere or newer); "
            "this one does not: use precision=auto or fp32"
        )
    folder = Path(config.checkpoint_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ConfigError(
            f"checkpoint_dir {config.checkpoint_dir!r} cannot be written "
            f"({error.strerror or error}); give a folder this user may write"
        ) from None


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
        return has_ampere_tensor_cores(device)
    return device.type == "cpu" and cpu_has_native_bf16()


def has_ampere_tensor_cores(device: torch.device) -> bool:
    """Whether the CUDA `device` computes bf16 and TF32 in hardware (compute capability 8.0+).

    The one rule for both `precision=auto` and refusing `precision=bf16`.
    """
    return torch.cuda.get_device_capability(device) >= AMPERE


@contextlib.contextmanager
def torch_settings(env: Environment) -> Iterator[None]:
    """Inside the block, the process-wide torch settings `env` asks for; the previous after.

    TF32 for any matmul left in fp32 on CUDA (bf16 autocast covers the rest). Deterministic
    kernels (slower), or cuDNN picking the fastest ones by timing them: on CUDA, atomics in some
    backward kernels and cuDNN's timed choice of algorithm make two runs of one seed differ in
    the last digits, and a resumed run differ from an uninterrupted one; the CPU kernels this
    project uses are deterministic either way. These flags belong to the process, so a sweep's
    next trial would otherwise inherit them.
    """
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        os.environ.get(CUBLAS_WORKSPACE_VARIABLE),
    )
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if env.deterministic:
        # cuBLAS reduces reproducibly only with a fixed workspace; it reads this once, when
        # the process creates its first cuBLAS handle.
        os.environ.setdefault(CUBLAS_WORKSPACE_VARIABLE, CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(env.deterministic)
    torch.backends.cudnn.benchmark = not env.deterministic
    try:
        yield
    finally:
        matmul_tf32, cudnn_tf32, benchmark, deterministic, workspace = saved
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(deterministic)
        if workspace is None:
            os.environ.pop(CUBLAS_WORKSPACE_VARIABLE, None)
        else:
            os.environ[CUBLAS_WORKSPACE_VARIABLE] = workspace


def with_torch_settings(train: Callable[..., T]) -> Callable[..., T]:
    """Run `train(config, data, env, ...)` inside `torch_settings(env)`."""

    @functools.wraps(train)
    def scoped(config: TrainConfig, data: object, env: Environment, *args: Any, **kwargs: Any) -> T:
        with torch_settings(env):
            return train(config, data, env, *args, **kwargs)

    return scoped


def environment_for(config: TrainConfig) -> Environment:
    """The fastest known way to run `config` on its device, within `config.deterministic`.

    bf16 autocast (`config.precision`) halves the training time of all three models on a GPU
    and on a CPU with native bf16; the loss, softmax and optimiser state stay in fp32.
    """
    device = resolve_device(config.device)
    # Channels-last convolutions: ResNet18 trains ~15 % faster with oneDNN on a CPU, cuDNN feeds
    # tensor cores with them, and the Mixer's stem then emits its tokens without a copy.
    presets = model_spec(config.model).presets
    channels_last = presets.channels_last and device.type in ("cpu", "cuda")
    if device.type != "cpu":
        eval_batch_size = GPU_EVAL_BATCH_SIZE
    else:
        eval_batch_size = presets.cpu_eval_batch_size or EVAL_BATCH_SIZE
    return Environment(
        device=device,
        amp_dtype=torch.bfloat16 if uses_bf16(config.precision, device) else None,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
        eval_batch_size=eval_batch_size,
        # On a CPU one batch at a time stays in cache; a GPU prefers fewer, larger launches.
        augment_batches=1 if device.type == "cpu" else GPU_AUGMENT_BATCHES,
        compile=config.compile,
        tf32=device.type == "cuda" and has_ampere_tensor_cores(device),
        deterministic=config.deterministic,
    )
