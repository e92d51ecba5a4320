"""Per-epoch checkpoints, so that a killed run continues from its last complete epoch.

A checkpoint holds everything the next epoch depends on — weights, optimiser state, the batch
stream and the global random streams of the CPU and of every CUDA device, the epoch history —
so a resumed run ends with the same weights as one that was never interrupted. It is written to
a temporary file and renamed over the previous one: a crash mid-write leaves the last complete
checkpoint in place.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FILE = "last.pt"

log = logging.getLogger(__name__)


@dataclass
class TrainingState:
    """What `engine.fit` needs to continue after `epoch` (1-based, complete)."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    generator: torch.Tensor  # batch order and augmentation stream, of `device_type`
    torch_rng: torch.Tensor  # CPU initialisation and dropout stream
    history: list[dict[str, float]] = field(default_factory=list)  # EpochMetrics as dicts
    epoch_times: list[float] = field(default_factory=list)
    # Dropout on a GPU draws from each CUDA device's own stream; empty when CUDA was unused.
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    device_type: str = "cpu"  # where `generator` lives: its state differs by device type


def checkpoint_path(checkpoint_dir: str | Path, run_id: str) -> Path:
    return Path(checkpoint_dir).expanduser() / run_id / CHECKPOINT_FILE


def global_random_state() -> dict[str, Any]:
    """The global streams a `TrainingState` carries: the CPU's and every initialised GPU's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def restore_global_random_state(state: TrainingState) -> None:
    torch.set_rng_state(state.torch_rng)
    # A checkpoint from a machine with other GPUs (or none) restores the devices both have.
    if state.cuda_rng and torch.cuda.is_available():
        for index, rng in enumerate(state.cuda_rng[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, index)


def align_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's device, dtype and memory layout.

    `load_state_dict` moves the state to the parameter's device but keeps the saved strides:
    moments saved from channels-last weights (CPU, CUDA) and loaded for contiguous ones (MPS),
    or the other way round, would reach a fused CUDA kernel that requires matching layouts.
    """
    for param, param_state in optimizer.state.items():
        for name, value in param_state.items():
            same_shape = isinstance(value, torch.Tensor) and value.shape == param.shape
            if same_shape and (value.stride() != param.stride() or value.device != param.device):
                param_state[name] = torch.empty_like(param).copy_(value)


def restore_training_state(
    state: TrainingState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    seed: int,
) -> None:
    """Continue from `state`; from another device type, with the batch stream reseeded.

    A generator's state is device-specific (5,056 bytes on a CPU, 16 on CUDA), so a run
    checkpointed on one device type and continued on another cannot restore it: its stream is
    reseeded from the seed and the epoch, deterministically, and the run continues correctly
    though not bit for bit as it would have on the first device. The optimiser's state takes
    its parameters' device and memory layout.
    """
    model.load_state_dict(state.model)
    optimizer.load_state_dict(state.optimizer)
    align_optimizer_state(optimizer)
    if state.device_type == generator.device.type:
        generator.set_state(state.generator)
    else:
        generator.manual_seed(seed * 1_000_003 + state.epoch)
        log.warning(
            "continuing on %s a run checkpointed on %s: its batch order is reseeded",
            generator.device.type,
            state.device_type,
        )
    restore_global_random_state(state)


def save_checkpoint(path: Path, state: TrainingState) -> None:
    """Atomically replace the checkpoint at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state.__dict__, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path) -> TrainingState | None:
    """The checkpoint at `path`, on the CPU (`fit` moves what it needs), or None."""
    if not path.exists():
        return None
    return TrainingState(**torch.load(path, map_location="cpu", weights_only=False))


class CheckpointWriter:
    """Writes each epoch's state to `path` in a background thread, one write at a time.

    The write takes 50-100 ms for the MLP on a CPU and longer for ResNet18's 11 M parameters,
    paid every epoch; the loop pays only for `hold`'s copy of the state. The engine holds the
    state before it reports the epoch and starts the write after every report (`engine.fit`),
    so pickling does not hold the GIL while the reports are made. Until a write lands, the
    previous checkpoint stands: a run killed then repeats one epoch when resumed, with the same
    result, and logs none of its metrics twice. Leaving the context writes the last state held
    and waits for it, whether training ended or raised.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._unwritten: TrainingState | None = None
        self._pending: Future | None = None
        self._copied: torch.cuda.Event | None = None  # the held state's device-to-host copies

    def hold(self, state: TrainingState) -> None:
        """Copy `state`: training goes on changing the weights and optimiser state in place.

        From a GPU the copies go into pinned host memory without blocking the loop; the
        writer waits for them on `_copied`, an event recorded after them on the same stream,
        so later training steps cannot change what they read.
        """
        self.wait()
        self._unwritten = TrainingState(**_copy_to_cpu(vars(state)))
        self._copied = None
        if _holds_cuda_tensors(vars(state)):
            self._copied = torch.cuda.Event()
            self._copied.record()

    def start_write(self) -> None:
        if self._unwritten is not None:
            state, self._unwritten = self._unwritten, None
            self._pending = self._writer.submit(_write_when_copied, self.path, state, self._copied)

    def wait(self) -> None:
        """Block until the last checkpoint is on disk; raises if writing it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.start_write()
        try:
            self.wait()
        finally:
            self._writer.shutdown()


def _write_when_copied(path: Path, state: TrainingState, copied: torch.cuda.Event | None) -> None:
    if copied is not None:
        copied.synchronize()
    save_checkpoint(path, state)


def _holds_cuda_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_cuda
    if isinstance(value, dict):
        return any(_holds_cuda_tensors(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_cuda_tensors(item) for item in value)
    return False


def _copy_to_cpu(value: Any) -> Any:
    """`value` with every tensor copied to the CPU and every container copied.

    A CUDA tensor's copy is queued into pinned memory and is complete only once the stream
    reaches it (`CheckpointWriter.hold` records the event to wait for).
    """
    if isinstance(value, torch.Tensor) and value.is_cuda:
        pinned = torch.empty_like(value, device="cpu", pin_memory=True)
        return pinned.copy_(value.detach(), non_blocking=True)
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copy_to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copy_to_cpu(item) for item in value)
    return value
