"""Per-epoch checkpoints, so that a killed run continues from its last complete epoch.

A checkpoint holds everything the next epoch depends on — weights, optimiser state, both
random streams, the epoch history — so a resumed run ends with the same weights as one that
was never interrupted. It is written to a temporary file and renamed over the previous one:
a crash mid-write leaves the last complete checkpoint in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "last.pt"


@dataclass
class TrainingState:
    """What `engine.fit` needs to continue after `epoch` (1-based, complete)."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    generator: torch.Tensor  # batch order and augmentation stream
    torch_rng: torch.Tensor  # initialisation and dropout stream
    history: list[dict[str, float]] = field(default_factory=list)  # EpochMetrics as dicts
    epoch_times: list[float] = field(default_factory=list)


def checkpoint_path(checkpoint_dir: str | Path, run_id: str) -> Path:
    return Path(checkpoint_dir).expanduser() / run_id / CHECKPOINT_FILE


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
