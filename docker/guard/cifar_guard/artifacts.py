"""Experiments keep their artifacts inside the server's proxied store.

The check sits on the tracking store's `create_experiment`, after MLflow has parsed the request
its own way (field names in either spelling, double-encoded bodies, any charset, REST or ajax
route, or any route MLflow adds later), so it judges the value MLflow is about to store.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE


def confine(store) -> None:
    """Make `store.create_experiment` refuse artifact locations outside the proxied store."""
    create_experiment = store.create_experiment

    def confined_create_experiment(name, artifact_location=None, tags=None):
        if artifact_location and not inside_proxied_store(artifact_location):
            raise MlflowException(
                f"artifact location {artifact_location} is outside the server's artifact "
                "store; leave it empty",
                INVALID_PARAMETER_VALUE,
            )
        return create_experiment(name, artifact_location, tags)

    # On the instance, so that the store keeps its class for MLflow's isinstance checks.
    store.create_experiment = confined_create_experiment


def inside_proxied_store(location: str) -> bool:
    parts = urlsplit(location)
    path = unquote(parts.path).replace("\\", "/")
    return (
        parts.scheme == "mlflow-artifacts"
        and not parts.netloc
        and not parts.query
        and not parts.fragment
        and path.startswith("/")
        and ".." not in path.split("/")
    )
