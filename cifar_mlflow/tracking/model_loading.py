"""Logged models loaded back by URI: what `predict` classifies images with."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.pyfunc import PyFuncModel

from cifar_mlflow.classifier import is_image_classifier
from cifar_mlflow.errors import ModelNotUsableError
from cifar_mlflow.reachability import redact_uri
from cifar_mlflow.tracking.client import check_tracking_uri


def load_classifier(model_uri: str) -> PyFuncModel:
    """The pyfunc model at `model_uri`, if it is an image classifier of this project.

    The URI is resolved and the model downloaded once; its MLmodel is read from the copy.
    """
    # The predictions are this command's output; MLflow's download bars would only add noise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    scheme = urlsplit(model_uri).scheme
    if scheme == "models":
        check_tracking_uri(mlflow.get_registry_uri())
    elif scheme == "runs":
        check_tracking_uri(mlflow.get_tracking_uri())
    try:
        local_path = mlflow.artifacts.download_artifacts(model_uri)
        mlmodel = Model.load(local_path)
    except (MlflowException, OSError) as error:
        reason = str(getattr(error, "message", error)).strip().splitlines()[0]
        raise ModelNotUsableError(f"no model at {redact_uri(model_uri)} ({reason})") from None
    if not is_image_classifier(mlmodel.metadata):
        hint = "log or register one trained by this project"
        pyfunc = mlmodel.flavors.get(mlflow.pyfunc.FLAVOR_NAME, {})
        if pyfunc.get(mlflow.pyfunc.MAIN) == "mlflow.pytorch":
            hint = (
                "it is a bare network of an earlier release: load it with "
                "mlflow.pytorch.load_model, or train the model again"
            )
        raise ModelNotUsableError(
            f"{redact_uri(model_uri)} is not an image classifier of cifar-mlflow (its MLmodel "
            f"has no cifar_mlflow metadata); {hint}"
        )
    # MLflow's check of the model's requirements against the installed packages reads every
    # installed distribution's file list (about a second); `predict` runs in the environment of
    # the project that logged the model.
    return mlflow.pyfunc.load_model(local_path, suppress_warnings=True)
