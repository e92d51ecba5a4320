"""The logged model's python_function flavor: encoded images in, class names and probabilities out.

This file travels with every logged model as its pyfunc `loader_module` (copied into the
model's `code/` folder as `CODE_MODULE`.py, see `tracking.model_logging`), so that
`mlflow.pyfunc.load_model` and `mlflow models serve` use it where this project is not
installed: it imports nothing from `cifar_mlflow`, and neither MLflow, pandas nor PIL at import time
(the engine imports `standardise` from here and never imports MLflow).

The same model's `pytorch` flavor is the trained network itself, which takes standardised
float images (N, 3, 32, 32): `standardise` is the one definition of that step, for training
and for answering.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

CODE_MODULE = "cifar_mlflow_image_classifier"
CONFIG_FILE = "classifier.json"  # beside the network, in the model's data folder
IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB channels: what the network takes per image
IMAGE_COLUMN = "image"  # the input: encoded image files (PNG, JPEG...)
CLASS_COLUMN = "class"
# The MLmodel's `metadata` entry by which `predict` recognises this project's classifiers.
METADATA_KEY = "cifar_mlflow"
METADATA_KIND = "image_classifier"
# Images per forward pass: bounds the memory of a large request, not its answer.
PREDICT_BATCH = 256


def standardise(
    images_nhwc: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 images (N, H, W, 3) → float (N, 3, H, W), standardised by per-channel fractions."""
    scale_mean = torch.tensor(mean, device=images_nhwc.device) * 255
    scale_std = torch.tensor(std, device=images_nhwc.device) * 255
    return ((images_nhwc.float() - scale_mean) / scale_std).permute(0, 3, 1, 2)


def fit_image(image: Any) -> np.ndarray:
    """A PIL image as RGB uint8 (32, 32, 3): converted, centre-cropped to a square and resized
    (`ImageOps.fit`, bicubic with antialiasing). `predict` and the served model both use it."""
    from PIL import Image, ImageOps

    size = IMAGE_SHAPE[1], IMAGE_SHAPE[0]
    fitted = ImageOps.fit(image.convert("RGB"), size, method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def decode_image(encoded: bytes) -> np.ndarray:
    """An encoded image file's bytes as `fit_image` gives them; OSError if PIL cannot read it."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        return fit_image(image)


class ImageClassifier:
    """A CPU fp32 network with its class names: images → class name + probabilities."""

    def __init__(
        self,
        network: nn.Module,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.network = network.eval()
        self.class_names = tuple(class_names)
        self.mean, self.std = tuple(mean), tuple(std)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Softmax of the network's logits, (N, classes), for uint8 images (N, 32, 32, 3)."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        with torch.inference_mode():
            parts = [
                torch.softmax(self.network(standardise(part, self.mean, self.std)).float(), dim=1)
                for part in batch.split(PREDICT_BATCH)
            ]
        return torch.cat(parts).numpy() if parts else np.zeros((0, len(self.class_names)))

    def answer(self, pixels: np.ndarray) -> Any:
        """One row per image: the predicted `class`, then one probability column per class."""
        import pandas as pd

        probabilities = self.probabilities(pixels).astype(np.float64)
        frame = pd.DataFrame(probabilities, columns=list(self.class_names))
        names = np.asarray(self.class_names, dtype=object)
        frame.insert(0, CLASS_COLUMN, names[probabilities.argmax(axis=1)])
        return frame

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """The pyfunc's answer to a frame whose `image` column holds encoded image files."""
        pixels = np.zeros((len(model_input), *IMAGE_SHAPE), dtype=np.uint8)
        for index, encoded in enumerate(model_input[IMAGE_COLUMN]):
            try:
                pixels[index] = decode_image(encoded)
            except OSError as error:
                from mlflow.exceptions import MlflowException

                raise MlflowException.invalid_parameter_value(
                    f"image {index} is not an image file PIL can read ({error})"
                ) from None
        return self.answer(pixels)


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> ImageClassifier:
    """MLflow's loader hook: the classifier from the model's data folder, on the CPU."""
    with open(os.path.join(data_path, CONFIG_FILE)) as file:
        config = json.load(file)
    # Pickled by cloudpickle (MLflow's pytorch flavor), which plain pickle reads back.
    network = torch.load(
        os.path.join(data_path, "model.pth"), map_location="cpu", weights_only=False
    )
    return ImageClassifier(network.float(), config["class_names"], config["mean"], config["std"])


def classifier_config(
    class_names: Sequence[str], mean: Sequence[float], std: Sequence[float]
) -> str:
    """The contents of `CONFIG_FILE`: what `_load_pyfunc` needs besides the network."""
    return json.dumps({"class_names": list(class_names), "mean": list(mean), "std": list(std)})


def model_metadata(class_names: Sequence[str]) -> dict[str, Any]:
    return {METADATA_KEY: {"kind": METADATA_KIND, "class_names": list(class_names)}}


def is_image_classifier(metadata: dict[str, Any] | None) -> bool:
    """Whether an MLmodel's `metadata` says it is an image classifier of this project."""
    entry = (metadata or {}).get(METADATA_KEY)
    return isinstance(entry, dict) and entry.get("kind") == METADATA_KIND
