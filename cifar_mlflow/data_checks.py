"""What a CIFAR-10 batch file must hold before its images are trusted.

A batch is read as the official files are laid out: `data`, uint8 pixels (N, 3072) channel
by channel (or already (N, 3, 32, 32)), and `labels`, N class indices in 0-9. Anything else
would be reinterpreted silently (a float image cast to bytes, an (N, 32, 32, 3) image read
channel-first) or fail only inside training, once the run exists (a label of 10 indexes past
the 10 logits). Each defect is one line naming the file, what it holds and what is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cifar_mlflow.errors import UserError

NUM_CLASSES = 10
IMAGE_SHAPES = ((3 * 32 * 32,), (3, 32, 32))  # per image: the official rows, or channel-first


class BadDataSetError(UserError):
    """A data set file holds something other than CIFAR-10 images and labels."""


def check_batch(path: Path, batch: object) -> None:
    """Refuse, in one line, a batch whose images or labels are not CIFAR-10's."""
    if not isinstance(batch, Mapping) or "data" not in batch or "labels" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise BadDataSetError(
            f"{path} is not a CIFAR-10 batch (holds {keys}; expected 'data' and 'labels')"
        )
    images, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if images.dtype != np.uint8:
        raise BadDataSetError(
            f"{path}: images are {images.dtype}, expected uint8 pixels (0-255) as in CIFAR-10"
        )
    if images.ndim < 1 or images.shape[1:] not in IMAGE_SHAPES:
        raise BadDataSetError(
            f"{path}: images have shape {images.shape}, expected (N, 3072) or (N, 3, 32, 32)"
        )
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise BadDataSetError(
            f"{path}: labels are {labels.dtype} of shape {labels.shape}, expected a list of "
            "integers"
        )
    if len(labels) != len(images):
        raise BadDataSetError(f"{path} has {len(images)} images but {len(labels)} labels")
    outside = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if outside.size:
        raise BadDataSetError(
            f"{path}: {outside.size} labels outside 0-{NUM_CLASSES - 1} (e.g. {outside[0]}); "
            f"CIFAR-10 labels are class indices 0-{NUM_CLASSES - 1}"
        )
