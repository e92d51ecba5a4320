"""CIFAR-10 as tensors on the training device, with batched augmentation (airbench-style).

The on-disk format is CIFAR-10's python layout (`cifar-10-batches-py/`: Python 2 pickles, see
`cifar_pickle`). It is read with `pickle` directly rather than through
`torchvision.datasets.CIFAR10`, which insists on the official checksums: a folder in the same
layout with other content (a test fixture, the synthetic set) must load too. torchvision is
only used to download the archive.
"""

from __future__ import annotations

import hashlib
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cifar_mlflow import cifar_pickle
from cifar_mlflow.cifar_pickle import CIFAR_FOLDER, CLASS_NAMES, TRAIN_BATCHES
from cifar_mlflow.classifier import standardise
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data_checks import check_batch
from cifar_mlflow.errors import UserError
from cifar_mlflow.synthetic import write_synthetic_cifar

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
VALID_FRACTION = 0.1
DOWNLOAD_TIMEOUT_S = 10


class DataError(UserError):
    """The data set cannot be read or fetched; the message is one line for the user."""


@dataclass(frozen=True)
class CifarArrays:
    """A data set as loaded from disk: uint8 images (N, 32, 32, 3) and int64 labels."""

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    def digest(self) -> str:
        """Content hash of the arrays, so runs say exactly what they trained on.

        Images are hashed channels-first, the order of the CIFAR files: the arrays read from
        them are views in that memory, so nothing is copied (0.1 s for CIFAR-10, not 0.35 s).
        """
        sha = hashlib.sha256()
        for images, labels in (
            (self.train_images, self.train_labels),
            (self.test_images, self.test_labels),
        ):
            sha.update(np.ascontiguousarray(images.transpose(0, 3, 1, 2)).data)
            sha.update(np.ascontiguousarray(labels).data)
        return sha.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Normalised images (N, 3, 32, 32) and labels, on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DeviceData:
    train: Split
    valid: Split
    test: Split
    num_classes: int


def dataset_folder(config: TrainConfig) -> Path:
    """Where `config.dataset` lives: `data_dir/cifar-10-batches-py` (synthetic: a subfolder)."""
    root = Path(config.data_dir).expanduser()
    if config.dataset == "synthetic":
        root = root / "synthetic"
    return root / CIFAR_FOLDER


def load_arrays(config: TrainConfig) -> CifarArrays:
    """Read the data set, generating (synthetic) or downloading (cifar10) it when absent."""
    folder = dataset_folder(config)
    if not (folder / "test_batch").exists():
        if config.dataset == "synthetic":
            try:
                write_synthetic_cifar(folder)
            except OSError as error:
                raise DataError(
                    f"data_dir {config.data_dir!r} cannot hold the synthetic data set "
                    f"({error.strerror or error}); give a folder this user may write"
                ) from None
        else:
            download_cifar(folder)
    return read_cifar_folder(folder, name=config.dataset)


def read_cifar_folder(folder: Path, name: str = "cifar10") -> CifarArrays:
    """Read a folder in CIFAR-10's python layout, whatever its content."""
    present = [batch for batch in TRAIN_BATCHES if (folder / batch).exists()]
    if not present or not (folder / "test_batch").exists():
        raise DataError(
            f"{folder} is not in the CIFAR-10 python layout: expected data_batch_1..5 and "
            "test_batch"
        )
    train = [_read_batch(folder / batch) for batch in present]
    test_images, test_labels = _read_batch(folder / "test_batch")
    meta_path = folder / "batches.meta"
    class_names = CLASS_NAMES
    if meta_path.exists():
        class_names = tuple(map(cifar_pickle.as_text, _unpickle(meta_path)["label_names"]))
    return CifarArrays(
        name=name,
        source=str(folder.resolve()),
        train_images=np.concatenate([images for images, _ in train]),
        train_labels=np.concatenate([labels for _, labels in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
    )


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return cifar_pickle.load(handle)
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    check_batch(path, batch)
    try:
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (KeyError, ValueError) as error:
        raise DataError(f"{path} is not a CIFAR-10 batch ({error})") from None
    if len(images) != len(labels):
        raise DataError(f"{path} has {len(images)} images but {len(labels)} labels")
    return images.transpose(0, 2, 3, 1), labels


def download_cifar(folder: Path) -> None:
    """Fetch and extract the official archive next to `folder`, or fail in one line quickly."""
    from torchvision.datasets.utils import download_and_extract_archive

    previous_timeout = socket.getdefaulttimeout()
    # Without a timeout an offline machine can hang for minutes in DNS or connect.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        download_and_extract_archive(CIFAR_URL, str(folder.parent), md5=CIFAR_MD5)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"CIFAR-10 could not be fetched into {folder} ({reason}); put "
            f"cifar-10-python.tar.gz extracted there, or use dataset=synthetic to run offline"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def split_indices(num_images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint train/valid indices from one seeded permutation (valid = 10 %)."""
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_images, generator=generator)
    num_valid = round(num_images * VALID_FRACTION)
    return permutation[num_valid:], permutation[:num_valid]


def to_device(
    arrays: CifarArrays,
    config: TrainConfig,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> DeviceData:
    """Split, normalise and move the whole data set to `device` once."""
    train_idx, valid_idx = split_indices(len(arrays.train_labels), config.seed)
    if config.train_size:
        train_idx = train_idx[: config.train_size]
    images = torch.from_numpy(arrays.train_images)
    labels = torch.from_numpy(arrays.train_labels)

    def split(split_images: torch.Tensor, split_labels: torch.Tensor) -> Split:
        normalised = normalise(split_images.to(device)).contiguous(memory_format=memory_format)
        return Split(normalised, split_labels.to(device))

    return DeviceData(
        train=split(images[train_idx], labels[train_idx]),
        valid=split(images[valid_idx], labels[valid_idx]),
        test=split(torch.from_numpy(arrays.test_images), torch.from_numpy(arrays.test_labels)),
        num_classes=len(arrays.class_names),
    )


def normalise(images_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3) → float (N, 3, H, W), standardised with the CIFAR statistics."""
    return standardise(images_nhwc, CIFAR_MEAN, CIFAR_STD)
