"""A wheel built from the repository works outside it: the built-in studies ship inside it.

The wheel is built from a copy of the repository's files (nothing is written into the
checkout) and installed, without its dependencies, into a fresh virtual environment outside
the checkout; the environment reaches the dependencies through a `.pth` file naming this
interpreter's site-packages, so no network or second copy of torch is needed. The installed
`cifar-mlflow` command then runs the built-in study `activation` by name, on a toy data set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from mlflow import MlflowClient
from packaging.version import Version

from cifar_mlflow import schema

ROOT = Path(__file__).resolve().parents[1]


def repository_files() -> list[str]:
    """The files a clone has (tracked, or new and not ignored), as paths under ROOT."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name]


def build_wheel(source_copy: Path, dist: Path) -> Path:
    for name in repository_files():
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink():
            (source_copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source_copy / name)
    # Offline, so the build uses the installed setuptools: the newest one this interpreter
    # can see (a light virtual environment may shadow its base's with an old one).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site_packages(newest_setuptools_first=True))}
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(source_copy),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("cifar_mlflow-*.whl")
    return wheel


def site_packages(newest_setuptools_first: bool = False) -> list[str]:
    """This interpreter's site-packages folders (where the dependencies are installed)."""
    folders = [entry for entry in sys.path if entry.endswith("site-packages")]

    def setuptools_version(folder: str) -> Version:
        found = sorted(Path(folder).glob("setuptools-*.dist-info"))
        return Version(found[0].name.split("-")[1].removesuffix(".dist")) if found else Version("0")

    if newest_setuptools_first:
        folders.sort(key=setuptools_version, reverse=True)
    return folders


def fresh_environment(folder: Path) -> Path:
    """A new virtual environment whose only packages are this interpreter's dependencies."""
    venv.EnvBuilder(with_pip=False).create(folder)
    (own_site_packages,) = folder.glob("lib/python*/site-packages")
    (own_site_packages / "dependencies.pth").write_text("\n".join(site_packages()) + "\n")
    return folder / "bin"


@pytest.mark.e2e
def test_an_installed_wheel_runs_a_builtin_study_by_name_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path / "source", tmp_path / "dist")
    assert any(name.endswith("builtin_studies/activation.yaml") for name in wheel_names(wheel))
    bin_dir = fresh_environment(tmp_path / "venv")
    subprocess.run(
        [
            bin_dir / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")
    }
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    where = subprocess.run(
        [bin_dir / "python", "-c", "import cifar_mlflow; print(cifar_mlflow.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(where).resolve().is_relative_to((tmp_path / "venv").resolve()), where
    result = subprocess.run(
        [
            bin_dir / "cifar-mlflow",
            "sweep",
            "--study",
            "activation",
            "--no-register",
            "--dataset",
            "synthetic",
            "--data-dir",
            str(tmp_path / "data"),
            "--train-size",
            "64",
            "--epochs",
            "1",
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "Sweep activation: 3 finished" in result.stdout
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (experiment,) = [e for e in client.search_experiments() if e.name == schema.DEFAULT_EXPERIMENT]
    runs = client.search_runs([experiment.experiment_id], f"tags.{schema.TAG_STUDY} = 'activation'")
    trials = [run for run in runs if run.data.tags.get(schema.TAG_ROLE) == schema.ROLE_TRIAL]
    assert sorted(run.data.params["activation"] for run in trials) == ["relu", "sigmoid", "tanh"]
    assert (
        not (ROOT / "build").exists() or (ROOT / "build").stat().st_mtime < tmp_path.stat().st_mtime
    )


def wheel_names(wheel: Path) -> list[str]:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()
