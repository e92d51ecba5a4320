"""`predict`: image files through a logged or registered classifier, one line per image.

Any image PIL opens is converted to RGB, its central square cropped and resized to 32×32
(`classifier.fit_image`, bicubic with antialiasing), the layout the classifier takes. The
model's own pyfunc decodes the files (the function a served model uses on posted files); a
model of the release before, whose pyfunc takes uint8 arrays, gets them fitted here by the
same function.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from PIL import Image, UnidentifiedImageError

from cifar_mlflow.classifier import CLASS_COLUMN, IMAGE_COLUMN, fit_image
from cifar_mlflow.errors import UserError

FORMATS = ("text", "csv", "json")
# Images read and classified at a time: a folder of any size in bounded memory.
CHUNK = 512


class PredictionError(UserError):
    """An input that is not an image, or a model that does not exist or is not a classifier."""


@dataclass(frozen=True)
class Prediction:
    file: str
    ranked: list[tuple[str, float]]  # (class, probability), most probable first


def image_files(paths: Sequence[Path]) -> list[Path]:
    """The files to classify, each checked to be an image (its header only: no decoding).

    Each file given counts; a folder gives each file in it whose extension PIL knows.
    """
    extensions = set(Image.registered_extensions())
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions
            )
            if not found:
                raise PredictionError(f"{path} holds no image files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PredictionError(f"{path} does not exist")
    for file in files:
        opened(file).close()
    return files


def opened(path: Path) -> Image.Image:
    """`path` opened lazily by PIL, or the one-line error saying it is not an image."""
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        reason = str(error).replace(str(path), "").strip(" '") or type(error).__name__
        raise PredictionError(f"{path} is not an image PIL can read ({reason})") from None


def read_image(path: Path) -> np.ndarray:
    """`path` as RGB uint8 (32, 32, 3): converted, centre-cropped to a square and resized."""
    try:
        with opened(path) as image:
            return fit_image(image)
    except OSError as error:  # a header PIL knows over truncated or corrupt pixel data
        raise PredictionError(f"{path} is not an image PIL can read ({error})") from None


def answers(model: PyFuncModel, files: Sequence[Path]) -> pd.DataFrame:
    """The model's frame for `files`: the files themselves, or pixels for a model that takes
    uint8 arrays (the release before)."""
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec():
        return model.predict(np.stack([read_image(path) for path in files]))
    try:
        return model.predict(pd.DataFrame({IMAGE_COLUMN: [path.read_bytes() for path in files]}))
    except MlflowException:
        for path in files:
            read_image(path)  # names the file the model could not decode
        raise


def predict_files(model: PyFuncModel, files: Sequence[Path], top_k: int) -> Iterator[Prediction]:
    """Each file's `top_k` classes with their probabilities, in the order of `files`."""
    for start in range(0, len(files), CHUNK):
        chunk = files[start : start + CHUNK]
        probabilities = answers(model, chunk).drop(columns=CLASS_COLUMN)
        for path, (_, row) in zip(chunk, probabilities.iterrows(), strict=True):
            ranked = row.sort_values(ascending=False, kind="stable").head(top_k)
            yield Prediction(str(path), [(name, float(p)) for name, p in ranked.items()])


def format_line(prediction: Prediction, output_format: str) -> str:
    """One image's line: `text` (tab-separated), `csv` or `json` (a JSON object)."""
    if output_format == "json":
        (best, confidence), *others = prediction.ranked
        record = {"file": prediction.file, "class": best, "confidence": confidence}
        if others:
            record["top_k"] = [{"class": c, "confidence": p} for c, p in prediction.ranked]
        return json.dumps(record)
    cells = [prediction.file]
    for name, probability in prediction.ranked:
        cells += [name, f"{probability:.4f}"]
    if output_format == "text":
        return "\t".join(cells)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()


def csv_header(top_k: int) -> str:
    """`file,class,confidence` then `class_2,confidence_2`... up to `top_k`."""
    columns = ["file", "class", "confidence"]
    for rank in range(2, top_k + 1):
        columns += [f"class_{rank}", f"confidence_{rank}"]
    return ",".join(columns)
