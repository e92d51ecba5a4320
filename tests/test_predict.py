"""`python -m cifar_mlflow predict` (issue 15): image files through a registered classifier."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from PIL import Image

from cifar_mlflow.cifar_pickle import CLASS_NAMES
from cifar_mlflow.classifier import ImageClassifier, model_metadata
from cifar_mlflow.cli import main
from cifar_mlflow.data import CIFAR_MEAN, CIFAR_STD
from cifar_mlflow.prediction import read_image
from cifar_mlflow.registry import register_sweep_champion
from cifar_mlflow.tracking.model_logging import encoded_images
from tests.classifier_runs import STUDY, colour_images, sweep_parent, trained_network, trial

URI = f"models:/cifar10-{STUDY}@champion"


@pytest.fixture
def champion(tracking_store: str) -> mlflow.pyfunc.PyFuncModel:
    experiment_id = MlflowClient().create_experiment("predict")
    parent = sweep_parent(experiment_id)
    trial(experiment_id, parent, best_valid_acc=0.5, test_acc=0.5)
    register_sweep_champion(STUDY, parent)
    return mlflow.pyfunc.load_model(URI)


@pytest.fixture
def images(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Three 32×32 images as PNG (lossless: the pixels the model sees), and a text file."""
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = colour_images(1, seed=1)[0][[2, 5, 9]]
    paths = [folder / f"{name}.png" for name in ("a", "b", "c")]
    for path, image in zip(paths, pixels, strict=True):
        Image.fromarray(image).save(path)
    (folder / "notes.txt").write_text("not an image")
    return paths, pixels


def predict(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def expected(model: mlflow.pyfunc.PyFuncModel, pixels: np.ndarray) -> list[list[tuple[str, float]]]:
    """Per image, the classes by decreasing probability, as the model answers in Python."""
    frame = model.predict(encoded_images(pixels))[list(CLASS_NAMES)]
    return [
        sorted(row.items(), key=lambda item: -item[1]) for row in frame.to_dict(orient="records")
    ]


def test_text_lines_give_file_class_and_confidence(champion, images, capsys):
    paths, pixels = images
    status, out, _ = predict("--model", URI, *map(str, paths), capsys=capsys)
    assert status == 0
    lines = [line.split("\t") for line in out.splitlines()]
    ranked = expected(champion, pixels)
    assert [line[:2] for line in lines] == [
        [str(p), r[0][0]] for p, r in zip(paths, ranked, strict=True)
    ]
    assert [float(line[2]) for line in lines] == pytest.approx([r[0][1] for r in ranked], abs=1e-4)
    assert [line[1] for line in lines] == [CLASS_NAMES[k] for k in (2, 5, 9)]  # as trained


def test_a_folder_means_each_image_in_it_and_top_k_ranks_classes(champion, images, capsys):
    paths, pixels = images
    status, out, _ = predict(
        "--model", URI, "--format", "csv", "--top-k", "3", str(paths[0].parent), capsys=capsys
    )
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["file"] for row in rows] == [str(path) for path in paths]  # notes.txt skipped
    for row, ranked in zip(rows, expected(champion, pixels), strict=True):
        assert [row["class"], row["class_2"], row["class_3"]] == [c for c, _ in ranked[:3]]
        confidences = [float(row[k]) for k in ("confidence", "confidence_2", "confidence_3")]
        assert confidences == pytest.approx([p for _, p in ranked[:3]], abs=1e-4)


def test_json_is_one_object_per_image(champion, images, capsys):
    paths, pixels = images
    status, out, _ = predict("--model", URI, "--format", "json", str(paths[1]), capsys=capsys)
    assert status == 0
    (line,) = out.splitlines()
    ((best, confidence), *_), *_ = expected(champion, pixels[1:2])
    assert json.loads(line) == {"file": str(paths[1]), "class": best, "confidence": confidence}
    status, out, _ = predict(
        "--model", URI, "--format", "json", "--top-k", "10", str(paths[1]), capsys=capsys
    )
    record = json.loads(out)
    assert [entry["class"] for entry in record["top_k"]] == [
        c for c, _ in expected(champion, pixels[1:2])[0]
    ]


def test_any_image_becomes_rgb_centre_square_32x32(tmp_path: Path):
    # 96 wide, 64 high: red side bands outside the central 64×64 square, which is green.
    wide = np.zeros((64, 96, 3), dtype=np.uint8)
    wide[:, :16] = wide[:, 80:] = (255, 0, 0)
    wide[:, 16:80] = (0, 255, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    pixels = read_image(tmp_path / "wide.png")
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    # Squashed instead of cropped, the five outer columns would be red; resampling only
    # blends a little red into the outermost ones.
    assert (pixels[:, 4:-4] == (0, 255, 0)).all()
    assert (pixels[..., 1] > pixels[..., 0]).all()

    Image.new("L", (200, 200), 100).save(tmp_path / "grey.jpg")
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "small.png")
    assert (read_image(tmp_path / "grey.jpg") == 100).all()
    assert (read_image(tmp_path / "small.png") == (10, 20, 30)).all()


def test_not_an_image_stops_before_loading_the_model(tracking_store, images, capsys):
    paths, _ = images
    notes = paths[0].parent / "notes.txt"
    status, out, err = predict("--model", URI, str(paths[0]), str(notes), capsys=capsys)
    assert status == 2 and out == ""
    assert (
        err.strip() == f"Error: {notes} is not an image PIL can read (cannot identify image file)"
    )


def test_a_model_of_another_kind_is_refused(tracking_store, images, capsys, tmp_path: Path):
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    mlflow.pyfunc.save_model(tmp_path / "echo", python_model=Echo())
    paths, _ = images
    status, _, err = predict("--model", str(tmp_path / "echo"), str(paths[0]), capsys=capsys)
    assert status == 2
    assert "is not an image classifier of cifar-mlflow" in err and len(err.splitlines()) == 1


class ArraysClassifier(mlflow.pyfunc.PythonModel):
    """A classifier as the release before logged it: uint8 arrays in, no pytorch flavor."""

    def __init__(self) -> None:
        self.classifier = ImageClassifier(trained_network(), CLASS_NAMES, CIFAR_MEAN, CIFAR_STD)

    def predict(self, context, model_input: np.ndarray, params=None):
        return self.classifier.answer(model_input)


def test_a_model_of_the_release_before_still_answers(tracking_store, images, capsys, tmp_path):
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3))]))
    folder = tmp_path / "old"
    mlflow.pyfunc.save_model(
        folder,
        python_model=ArraysClassifier(),
        signature=signature,
        metadata=model_metadata(CLASS_NAMES),
        pip_requirements=["torch"],
    )
    paths, _ = images
    status, out, _ = predict("--model", str(folder), *map(str, paths), capsys=capsys)
    assert status == 0
    assert [line.split("\t")[1] for line in out.splitlines()] == [CLASS_NAMES[k] for k in (2, 5, 9)]


def test_a_bare_network_of_an_earlier_release_is_refused_saying_what_to_do(
    tracking_store, images, capsys, tmp_path: Path
):
    bare = tmp_path / "bare"
    mlflow.pytorch.save_model(
        trained_network(), bare, serialization_format="pickle", pip_requirements=["torch"]
    )
    paths, _ = images
    status, _, err = predict("--model", str(bare), str(paths[0]), capsys=capsys)
    assert status == 2 and len(err.splitlines()) == 1
    assert "load it with mlflow.pytorch.load_model, or train the model again" in err
