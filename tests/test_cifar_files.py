"""CIFAR-10's file format: the official Python 2 pickles, and Python 3 ones with any key type."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from cifar_mlflow import cifar_pickle, data, synthetic
from cifar_mlflow.cifar_pickle import CIFAR_FOLDER
from tests.test_data import write_cifar_folder


def python3_pickle(content: object, handle: IO[bytes]) -> None:
    pickle.dump(content, handle)


def latin1_bytes(text: str) -> bytes:
    return text.encode("latin1")


@pytest.mark.parametrize(
    ("dump", "key"),
    [(cifar_pickle.dump_python2, str), (python3_pickle, str), (python3_pickle, latin1_bytes)],
    ids=["official-python2", "python3-str-keys", "python3-bytes-keys"],
)
def test_the_official_format_and_python3_pickles_with_str_or_bytes_keys_load(
    tmp_path: Path, dump, key
) -> None:
    folder = write_cifar_folder(tmp_path, per_batch=8, test_size=4, dump=dump, key=key)
    arrays = data.read_cifar_folder(folder)
    assert arrays.train_images.shape == (40, 32, 32, 3)
    assert arrays.test_labels.shape == (4,)
    assert arrays.class_names[:2] == ("plane", "car")
    reference = data.read_cifar_folder(write_cifar_folder(tmp_path / "reference", 8, 4))
    np.testing.assert_array_equal(arrays.train_images, reference.train_images)
    assert arrays.digest() == reference.digest()


@pytest.mark.parametrize("write", ["fixture", "synthetic"])
def test_the_fixture_and_the_synthetic_set_are_python2_pickles_as_the_official_files(
    tmp_path: Path, write: str
) -> None:
    if write == "fixture":
        folder = write_cifar_folder(tmp_path, per_batch=4, test_size=4)
    else:
        folder = tmp_path / CIFAR_FOLDER
        synthetic.write_synthetic_cifar(folder, train_size=20, test_size=4)
    for name in ("data_batch_1", "batches.meta"):
        raw = (folder / name).read_bytes()
        # Protocol 2; a Python 2 `str` key (SHORT_BINSTRING), not Python 3's unicode.
        assert raw[:3] == b"\x80\x02}"
        assert b"c_codecs" not in raw and b"numpy._core" not in raw
        as_bytes = pickle.loads(raw, encoding="bytes")
        as_text = pickle.loads(raw, encoding="latin1")
        assert all(isinstance(k, bytes) for k in as_bytes)
        assert all(isinstance(k, str) for k in as_text)
    meta = pickle.loads((folder / "batches.meta").read_bytes(), encoding="bytes")
    assert all(isinstance(name, bytes) for name in meta[b"label_names"])
    batch = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="bytes")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape[1] == 3072
