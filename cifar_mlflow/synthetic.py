"""A learnable stand-in for CIFAR-10, written in its python layout (`dataset=synthetic`).

Tests, benchmarks and a first try of the project need no download: each class is a smooth
colour pattern, each image its class's pattern shifted, mirrored, rescaled and noisy.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from cifar_mlflow import cifar_pickle
from cifar_mlflow.cifar_pickle import CLASS_NAMES, TRAIN_BATCHES

SYNTHETIC_TRAIN_SIZE = 5_000
SYNTHETIC_TEST_SIZE = 1_000


def write_synthetic_cifar(
    folder: Path,
    train_size: int = SYNTHETIC_TRAIN_SIZE,
    test_size: int = SYNTHETIC_TEST_SIZE,
    seed: int = 0,
) -> None:
    """Write a learnable stand-in for CIFAR-10 in its python layout.

    Each class is a smooth colour pattern (a few random low-frequency gratings); an image is
    its class pattern, randomly shifted, mirrored and rescaled in contrast, plus pixel noise.
    Classes are separable but not trivially, so curves and study comparisons look like
    training on a real data set.
    """
    rng = np.random.default_rng(seed)
    prototypes = _class_prototypes(rng, len(CLASS_NAMES))
    images, labels = _sample_images(rng, prototypes, train_size + test_size)
    folder.mkdir(parents=True, exist_ok=True)
    train_chunks = np.array_split(np.arange(train_size), len(TRAIN_BATCHES))
    for batch_name, indices in zip(TRAIN_BATCHES, train_chunks, strict=True):
        _write_batch(folder / batch_name, images[indices], labels[indices])
    _write_pickle(folder / "batches.meta", {"label_names": list(CLASS_NAMES), "num_vis": 3072})
    # Last: `load_arrays` takes a folder with a test batch for complete.
    _write_batch(folder / "test_batch", images[train_size:], labels[train_size:])


def _class_prototypes(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    grid = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    prototypes = np.zeros((num_classes, 32, 32, 3))
    for cls in range(num_classes):
        for _ in range(3):
            fy, fx = rng.integers(0, 3, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            colour = rng.normal(0, 1, size=3)
            prototypes[cls] += np.sin(fy * yy + fx * xx + phase)[..., None] * colour
    return prototypes / prototypes.std(axis=(1, 2, 3), keepdims=True)


def _sample_images(
    rng: np.random.Generator, prototypes: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(prototypes), size=count)
    images = prototypes[labels]
    shifts = rng.integers(-4, 5, size=(count, 2))
    images = np.stack(
        [
            np.roll(image, tuple(shift), axis=(0, 1))
            for image, shift in zip(images, shifts, strict=True)
        ]
    )
    mirrored = rng.random(count) < 0.5
    images[mirrored] = images[mirrored, :, ::-1]
    images *= rng.uniform(0.6, 1.4, size=(count, 1, 1, 1))
    # A weaker pattern of another class and heavy noise keep the classes from being trivial.
    distractors = prototypes[rng.integers(0, len(prototypes), size=count)]
    images += 0.6 * distractors + rng.normal(0, 3.5, size=images.shape)
    pixels = 128 + 20 * images
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    _write_pickle(path, {"data": data, "labels": labels.tolist()})


def _write_pickle(path: Path, content: object) -> None:
    """Pickle `content` to `path` in one step, as the official files are.

    Parallel trials (Ray) may generate the same set at once: a reader sees a whole file or
    none, and each writer replaces it with the same content.
    """
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    with partial.open("wb") as handle:
        cifar_pickle.dump_python2(content, handle)
    os.replace(partial, path)
