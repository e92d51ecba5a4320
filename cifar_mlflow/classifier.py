"""The logged model as a user meets it: RGB uint8 images in, class names and probabilities out.

`ImageClassifier` is an MLflow pyfunc model holding the trained network, the normalisation
and the class names of the data set the run trained on. It is pickled by value together with
the network's classes (see `tracking.callback.log_model`), so `mlflow.pyfunc.load_model` and
`mlflow models serve` use it where this project is not installed: nothing in this module may
need `cifar_mlflow` at load time (the functions it calls from the package are pickled with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from torch import nn

from cifar_mlflow.data import normalise

IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB channels: what the model takes per image
CLASS_COLUMN = "class"
# The MLmodel's `metadata` entry by which `predict` recognises this project's classifiers.
METADATA_KEY = "cifar_mlflow"
METADATA_KIND = "image_classifier"
# Images per forward pass: bounds the memory of a large request, not its answer.
PREDICT_BATCH = 256


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """A CPU fp32 network on raw images: uint8 (N, 32, 32, 3) → class name + probabilities."""

    def __init__(self, network: nn.Module, class_names: Sequence[str]) -> None:
        self.network = network.eval()
        self.class_names = tuple(class_names)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax of the network's logits, (N, classes), for uint8 images (N, 32, 32, 3)."""
        pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        with torch.inference_mode():
            batches = [
                torch.softmax(self.network(normalise(batch)).float(), dim=1)
                for batch in pixels.split(PREDICT_BATCH)
            ]
        return torch.cat(batches).numpy() if batches else np.zeros((0, len(self.class_names)))

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """One row per image: the predicted `class`, then one probability column per class."""
        probabilities = self.probabilities(model_input)
        frame = pd.DataFrame(probabilities.astype(np.float64), columns=list(self.class_names))
        predicted = [self.class_names[i] for i in probabilities.argmax(axis=1)]
        frame.insert(0, CLASS_COLUMN, predicted)
        return frame


def model_signature(class_names: Sequence[str]) -> ModelSignature:
    """Declared input (a uint8 image batch) and output (class + named probabilities)."""
    images = TensorSpec(np.dtype(np.uint8), (-1, *IMAGE_SHAPE))
    outputs = [ColSpec("string", CLASS_COLUMN), *(ColSpec("double", name) for name in class_names)]
    return ModelSignature(inputs=Schema([images]), outputs=Schema(outputs))


def model_metadata(class_names: Sequence[str]) -> dict[str, Any]:
    return {METADATA_KEY: {"kind": METADATA_KIND, "class_names": list(class_names)}}


def is_image_classifier(metadata: dict[str, Any] | None) -> bool:
    """Whether an MLmodel's `metadata` says it is an `ImageClassifier` of this project."""
    entry = (metadata or {}).get(METADATA_KEY)
    return isinstance(entry, dict) and entry.get("kind") == METADATA_KIND
