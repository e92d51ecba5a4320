"""The dependency declarations agree: the tests run on the MLflow the team server's image pins,
and `mlflow run` with conda installs what `pip install .` does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; 3.10 runs the project, not this check

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(requirements: list[str], name: str) -> Requirement:
    (found,) = (r for r in map(Requirement, requirements) if r.name == name)
    return found


def names_and_specifiers(requirements: list[str]) -> set[tuple[str, str]]:
    return {(r.name, str(r.specifier)) for r in map(Requirement, requirements)}


def image_pin(package: str) -> str:
    """The version the server image installs `package` at: its hash-locked requirements."""
    locked = (ROOT / "docker" / "server-requirements.txt").read_text()
    (version,) = re.findall(rf"^{re.escape(package)}==(\S+)", locked, flags=re.MULTILINE)
    return version


def test_mlflow_is_pinned_to_the_server_image_version() -> None:
    pin = f"=={image_pin('mlflow')}"
    assert str(requirement(PROJECT["dependencies"], "mlflow").specifier) == pin
    server_extra = requirement(PROJECT["optional-dependencies"]["server"], "mlflow")
    assert str(server_extra.specifier) == pin and server_extra.extras == {"auth"}


def test_conda_env_lists_the_same_runtime_dependencies_as_pyproject() -> None:
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    (pip_section,) = (d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert names_and_specifiers(pip_section) == names_and_specifiers(PROJECT["dependencies"])
