"""Data: the CIFAR layout on disk, the seeded split, normalisation and augmentation."""

from __future__ import annotations

import pickle
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch

from cifar_mlflow import augmentation, cifar_pickle, data, synthetic
from cifar_mlflow.cifar_pickle import CIFAR_FOLDER
from cifar_mlflow.config import TrainConfig
from cifar_mlflow.data import CifarArrays, DataError

BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)]


def write_cifar_folder(
    root: Path,
    per_batch: int = 60,
    test_size: int = 50,
    seed: int = 1,
    dump: Callable[[object, IO[bytes]], None] = cifar_pickle.dump_python2,
    key: Callable[[str], str | bytes] = str,
) -> Path:
    """A folder in CIFAR-10's python layout with random content (not the official files).

    By default in the official files' format: Python 2 pickles whose keys load as `bytes`
    with `encoding="bytes"`; `data` rows are 3072 uint8 values (R plane, G plane, B plane),
    `labels` a list of ints. `dump` and `key` write other variants of it.
    """
    rng = np.random.default_rng(seed)
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True)

    def write(name: str, content: dict) -> None:
        with (folder / name).open("wb") as handle:
            dump({key(field): value for field, value in content.items()}, handle)

    def batch(count: int) -> dict:
        return {
            "batch_label": "fixture",
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=count).tolist(),
        }

    for name in BATCH_NAMES:
        write(name, batch(per_batch))
    write("test_batch", batch(test_size))
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write(
        "batches.meta", {"label_names": [key(n) for n in names], "num_cases_per_batch": per_batch}
    )
    return folder


def indexed_arrays(count: int = 200, test_count: int = 30) -> CifarArrays:
    """Arrays whose every pixel holds the image's index, and label = index: a split can be
    traced back to the original images exactly."""
    index = np.arange(count)
    train_images = np.broadcast_to(index[:, None, None, None], (count, 32, 32, 3))
    test_images = np.full((test_count, 32, 32, 3), 255, dtype=np.uint8)
    return CifarArrays(
        name="indexed",
        source="/nowhere",
        train_images=np.ascontiguousarray(train_images, dtype=np.uint8),
        train_labels=index.astype(np.int64),
        test_images=test_images,
        test_labels=np.zeros(test_count, dtype=np.int64),
        class_names=tuple(str(i) for i in range(10)),
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every connection or lookup fails at once (and is recorded)."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


# --- the on-disk layout ------------------------------------------------------------------------


def test_a_folder_in_the_cifar_layout_with_other_content_loads(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path, per_batch=40, test_size=25)
    arrays = data.read_cifar_folder(folder, name="cifar10")
    assert arrays.train_images.shape == (200, 32, 32, 3)
    assert arrays.train_images.dtype == np.uint8
    assert arrays.train_labels.shape == (200,)
    assert arrays.test_images.shape == (25, 32, 32, 3)
    assert arrays.class_names[:2] == ("plane", "car")
    assert arrays.source == str(folder.resolve())
    # Pixel order: the first 1024 values of a row are the red plane.
    with (folder / "data_batch_1").open("rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    np.testing.assert_array_equal(arrays.train_images[0, :, :, 0].ravel(), raw[b"data"][0, :1024])
    np.testing.assert_array_equal(arrays.train_images[0, :, :, 2].ravel(), raw[b"data"][0, 2048:])
    assert arrays.train_labels[:40].tolist() == raw[b"labels"]


def test_digest_depends_on_the_content(tmp_path: Path) -> None:
    first = data.read_cifar_folder(write_cifar_folder(tmp_path / "a", seed=1))
    again = data.read_cifar_folder(write_cifar_folder(tmp_path / "b", seed=1))
    other = data.read_cifar_folder(write_cifar_folder(tmp_path / "c", seed=2))
    assert first.digest() == again.digest()
    assert first.digest() != other.digest()


def test_load_arrays_uses_an_existing_folder_without_the_network(
    tmp_path: Path, offline: list[str]
) -> None:
    folder = write_cifar_folder(tmp_path)
    config = TrainConfig(dataset="cifar10", data_dir=str(tmp_path))
    assert data.dataset_folder(config) == folder
    arrays = data.load_arrays(config)
    assert len(arrays.train_labels) == 300
    assert offline == []


def test_missing_folder_offline_fails_fast_naming_the_folder(
    tmp_path: Path, offline: list[str]
) -> None:
    missing = tmp_path / "nothing-here"
    config = TrainConfig(dataset="cifar10", data_dir=str(missing))
    start = time.monotonic()
    with pytest.raises(DataError) as caught:
        data.load_arrays(config)
    assert time.monotonic() - start < 30
    message = str(caught.value)
    assert str(missing / CIFAR_FOLDER) in message
    assert "\n" not in message
    assert "synthetic" in message  # how to run offline
    assert offline, "the download was not even attempted"


def test_a_broken_folder_is_a_one_line_data_error(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as caught:
        data.read_cifar_folder(folder)
    assert "data_batch_3" in str(caught.value) and "\n" not in str(caught.value)


def test_synthetic_set_is_generated_once_in_the_cifar_layout(tmp_path: Path) -> None:
    config = TrainConfig(dataset="synthetic", data_dir=str(tmp_path))
    folder = data.dataset_folder(config)
    assert tmp_path in folder.parents
    arrays = data.load_arrays(config)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*BATCH_NAMES, "test_batch", "batches.meta"]
    )
    assert arrays.name == "synthetic"
    assert len(arrays.train_labels) == synthetic.SYNTHETIC_TRAIN_SIZE
    assert len(arrays.test_labels) == synthetic.SYNTHETIC_TEST_SIZE
    assert set(np.unique(arrays.train_labels)) == set(range(10))
    # Loaded again from disk: same content, not regenerated differently.
    stamp = (folder / "test_batch").stat().st_mtime_ns
    assert data.load_arrays(config).digest() == arrays.digest()
    assert (folder / "test_batch").stat().st_mtime_ns == stamp


# --- the split ---------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [50_000, 5_000, 997])
def test_split_is_disjoint_and_covers_the_training_set(count: int) -> None:
    train, valid = data.split_indices(count, seed=42)
    assert len(valid) == round(count * 0.1)
    assert len(train) + len(valid) == count
    assert not set(train.tolist()) & set(valid.tolist())
    assert sorted(train.tolist() + valid.tolist()) == list(range(count))


def test_cifar_split_sizes() -> None:
    train, valid = data.split_indices(50_000, seed=0)
    assert (len(train), len(valid)) == (45_000, 5_000)


def test_split_follows_the_seed() -> None:
    train_a, valid_a = data.split_indices(5_000, seed=42)
    train_b, valid_b = data.split_indices(5_000, seed=42)
    _, valid_c = data.split_indices(5_000, seed=43)
    assert torch.equal(train_a, train_b) and torch.equal(valid_a, valid_b)
    assert set(valid_a.tolist()) != set(valid_c.tolist())


def test_split_is_random_not_a_slice() -> None:
    _, valid = data.split_indices(5_000, seed=42)
    # A "last 10 %" split would put every valid index above 4,500.
    assert min(valid.tolist()) < 1_000 < max(valid.tolist())


def test_device_splits_are_disjoint_seeded_and_keep_images_with_labels() -> None:
    arrays = indexed_arrays(200)
    config = TrainConfig(seed=3)
    split = data.to_device(arrays, config, torch.device("cpu"))
    train_ids = split.train.labels.tolist()
    valid_ids = split.valid.labels.tolist()
    assert (len(train_ids), len(valid_ids)) == (180, 20)
    assert not set(train_ids) & set(valid_ids)
    assert sorted(train_ids + valid_ids) == list(range(200))
    # Each image still sits next to its own label (the pixel value is its index).
    mean = torch.tensor(data.CIFAR_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.CIFAR_STD).view(1, 3, 1, 1) * 255
    pixels = split.train.images * std + mean
    recovered = pixels.mean(dim=(1, 2, 3)).round().long()
    assert recovered.tolist() == train_ids
    # Same seed, same split; another seed, another one.
    again = data.to_device(arrays, config, torch.device("cpu"))
    assert again.valid.labels.tolist() == valid_ids
    other = data.to_device(arrays, TrainConfig(seed=4), torch.device("cpu"))
    assert set(other.valid.labels.tolist()) != set(valid_ids)
    # The test split is the test batch, untouched by the split.
    assert len(split.test) == 30


def test_train_size_shrinks_train_only_and_keeps_the_valid_split() -> None:
    arrays = indexed_arrays(200)
    full = data.to_device(arrays, TrainConfig(seed=3), torch.device("cpu"))
    small = data.to_device(arrays, TrainConfig(seed=3, train_size=50), torch.device("cpu"))
    assert len(small.train) == 50
    assert set(small.train.labels.tolist()) <= set(full.train.labels.tolist())
    assert torch.equal(small.valid.labels, full.valid.labels)


def test_normalisation_uses_the_cifar_statistics() -> None:
    arrays = indexed_arrays(10)
    split = data.to_device(arrays, TrainConfig(), torch.device("cpu"))
    assert split.train.images.shape[1:] == (3, 32, 32)
    assert split.train.images.dtype == torch.float32
    test = split.test.images[0]  # every pixel 255
    expected = [(1.0 - m) / s for m, s in zip(data.CIFAR_MEAN, data.CIFAR_STD, strict=True)]
    torch.testing.assert_close(test.mean(dim=(1, 2)), torch.tensor(expected))
    assert data.CIFAR_MEAN == (0.4914, 0.4822, 0.4465)
    assert data.CIFAR_STD == (0.2470, 0.2435, 0.2616)


# --- augmentation ------------------------------------------------------------------------------


def ramp(batch: int, axis: int) -> torch.Tensor:
    """Images that are a linear ramp from -1 to 1 along `axis` (3 = x, 2 = y)."""
    line = torch.linspace(-1, 1, 32)
    shape = [1, 1, 1, 1]
    shape[axis] = 32
    return line.view(shape).expand(batch, 3, 32, 32).contiguous()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_keeps_shape_and_dtype() -> None:
    images = torch.randn(8, 3, 32, 32)
    out = augmentation.augment(images, seeded(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.isfinite(out).all()


def test_augment_is_deterministic_for_a_seeded_generator() -> None:
    images = torch.randn(16, 3, 32, 32, generator=seeded(1))
    assert torch.equal(
        augmentation.augment(images, seeded(5)), augmentation.augment(images, seeded(5))
    )
    assert not torch.equal(
        augmentation.augment(images, seeded(5)), augmentation.augment(images, seeded(6))
    )


def test_augment_flips_about_half_of_the_images() -> None:
    images = ramp(400, axis=3)
    out = augmentation.augment(images, seeded(0))
    # The slope along x tells whether an image was mirrored.
    slope = (out[:, :, :, -1] - out[:, :, :, 0]).mean(dim=(1, 2))
    flipped = (slope < 0).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert (slope.abs() > 1.0).all()  # flipped or not, never flattened


def test_augment_crops_between_80_and_100_percent_of_the_area() -> None:
    # A vertical ramp is unchanged by flips: what changes is the crop.
    images = ramp(400, axis=2)
    out = augmentation.augment(images, seeded(0))
    span = out[:, 0, -1, :].mean(dim=1) - out[:, 0, 0, :].mean(dim=1)
    fraction = span / (images[0, 0, -1, 0] - images[0, 0, 0, 0])
    # Height fraction of the crop = sqrt(area / ratio), area in [0.8, 1], ratio in [0.9, 1.1].
    assert fraction.min().item() > 0.84
    assert fraction.max().item() <= 1.0 + 1e-4
    assert fraction.mean().item() < 0.97  # crops zoom in on most images
    assert (fraction < 0.99).float().mean().item() > 0.5


def test_augment_changes_images_but_keeps_their_statistics() -> None:
    images = torch.randn(64, 3, 32, 32, generator=seeded(2))
    out = augmentation.augment(images, seeded(3))
    changed = (out - images).abs().flatten(1).amax(dim=1) > 1e-3
    assert changed.float().mean().item() > 0.9
    # Resampling inside the image: no new range, mean preserved, mild smoothing at most.
    assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5
    assert out.mean().item() == pytest.approx(images.mean().item(), abs=0.02)
    assert 0.5 < out.std().item() / images.std().item() <= 1.0 + 1e-4
    # A constant image stays exactly that constant.
    constant = torch.full((4, 3, 32, 32), 0.7)
    torch.testing.assert_close(augmentation.augment(constant, seeded(0)), constant)


def test_augment_is_per_sample_not_per_batch() -> None:
    images = ramp(1, axis=3).repeat(32, 1, 1, 1)
    out = augmentation.augment(images, seeded(0))
    distinct = {tuple(row.round(decimals=4).tolist()) for row in out[:, 0, 16, :]}
    assert len(distinct) > 16


def test_the_data_command_generates_the_synthetic_set_once_and_describes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, offline: list[str]
) -> None:
    from cifar_mlflow.cli import main

    lines = []
    for _ in range(2):  # generated, then read as it is
        with pytest.raises(SystemExit) as exited:
            main(["data", "--dataset", "synthetic", "--data-dir", str(tmp_path)])
        assert exited.value.code == 0
        lines.append(capsys.readouterr().out)
    folder = tmp_path / "synthetic" / CIFAR_FOLDER
    arrays = data.read_cifar_folder(folder, name="synthetic")
    assert (
        lines[0]
        == lines[1]
        == (
            f"synthetic: 5000 training and 1000 test images in {folder.resolve()} "
            f"(digest {arrays.digest()})\n"
        )
    )
    assert offline == []
