"""The trained network as one MLflow model with two flavors, logged as an output of its run.

- `pytorch`: the network as trained (standardised float images (N, 3, 32, 32) → logits), what
  `mlflow.pytorch.load_model` returns, on any device (`map_location=`), saved by MLflow's own
  pytorch flavor;
- `python_function`: the image classifier of `cifar_mlflow.classifier` (encoded image files
  in, class name and probabilities out), whose loader module travels in the model's `code/`
  folder and reads the same `data/model.pth`: the weights are stored once.

Both load without this project installed: the network's classes are pickled by value (a
package shipped as code would upload each of its files separately), and the loader module
imports nothing from `cifar_mlflow`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import PIL
import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Run
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image
from torch import nn

import cifar_mlflow
from cifar_mlflow import classifier, schema
from cifar_mlflow.classifier import CLASS_COLUMN, CODE_MODULE, CONFIG_FILE, IMAGE_COLUMN
from cifar_mlflow.data import CIFAR_MEAN, CIFAR_STD
from cifar_mlflow.models.registry import extra_modules

MODEL_DATA = "data"  # MLflow's pytorch flavor keeps the network there


def model_signature(class_names: Sequence[str]) -> ModelSignature:
    """Declared input (a column of encoded image files) and output (class + probabilities)."""
    inputs = Schema([ColSpec(DataType.binary, IMAGE_COLUMN)])
    outputs = [ColSpec("string", CLASS_COLUMN), *(ColSpec("double", name) for name in class_names)]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def encoded_images(pixels: np.ndarray) -> pd.DataFrame:
    """uint8 images (N, 32, 32, 3) as the classifier's input: a column of PNG files' bytes."""
    files = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return pd.DataFrame({IMAGE_COLUMN: files})


def save_model(
    path: str,
    mlflow_model: Model,
    network: nn.Module,
    class_names: Sequence[str],
    **kwargs: Any,
) -> None:
    """`Model.log`'s flavor hook: MLflow's pytorch flavor, then this project's pyfunc flavor."""
    with tempfile.TemporaryDirectory(prefix="cifar-mlflow-code-") as folder:
        module_file = Path(folder) / f"{CODE_MODULE}.py"
        shutil.copyfile(classifier.__file__, module_file)
        mlflow.pytorch.save_model(
            network,
            path,
            mlflow_model=mlflow_model,
            code_paths=[str(module_file)],
            serialization_format="pickle",  # the nn.Module itself, not an exported graph
            **kwargs,
        )
    config = classifier.classifier_config(class_names, CIFAR_MEAN, CIFAR_STD)
    (Path(path) / MODEL_DATA / CONFIG_FILE).write_text(config)
    pytorch_flavor = mlflow_model.flavors[mlflow.pytorch.FLAVOR_NAME]
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module=CODE_MODULE,
        data=MODEL_DATA,
        code=pytorch_flavor["code"],
        conda_env="conda.yaml",
        python_env="python_env.yaml",
    )
    mlflow_model.save(str(Path(path) / "MLmodel"))


def log_model(
    run: Run,
    model: nn.Module,
    class_names: Sequence[str],
    example_pixels: np.ndarray,
    params: Mapping[str, str],
) -> str:
    """Log `model` with both flavors as an output of `run`; returns the logged model's id.

    `example_pixels` (real images of the data set) become the input example, as PNG files.
    Called from a thread without an active run, `Model.log` only fills the model created here;
    linking it to `run` is then one request, where MLflow would fetch the run twice and copy
    the history of every metric onto the model, a request per metric.
    """
    network = copy.deepcopy(model).float().cpu().eval()
    logged = mlflow.initialize_logged_model(
        name=schema.MODEL_NAME,
        source_run_id=run.info.run_id,
        params=dict(params),
        experiment_id=run.info.experiment_id,
    )
    flavor = SimpleNamespace(__name__="pytorch", save_model=save_model)
    with contextlib.ExitStack() as by_value:
        # Models registered from outside the package (CIFAR_MLFLOW_MODELS) go by value too.
        for package in (cifar_mlflow, *extra_modules()):
            by_value.enter_context(classes_pickled_by_value(package))
        Model.log(
            artifact_path=None,
            name=schema.MODEL_NAME,
            flavor=flavor,
            network=network,
            class_names=class_names,
            model_id=logged.model_id,
            signature=model_signature(class_names),
            input_example=encoded_images(example_pixels),
            metadata=classifier.model_metadata(class_names),
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"cloudpickle=={cloudpickle.__version__}",
                f"pillow=={PIL.__version__}",
            ],
        )
    MlflowClient().log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


@contextlib.contextmanager
def classes_pickled_by_value(package: ModuleType) -> Iterator[None]:
    """Inside the block, cloudpickle (MLflow's pickler) stores `package`'s classes' code."""
    if package.__name__ in cloudpickle.list_registry_pickle_by_value():
        yield  # registered by someone else, who keeps it
        return
    cloudpickle.register_pickle_by_value(package)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(package)
