"""The Python that runs `mlflow server`, found or built once where the service account can
run it.

As root the server runs as `cifar-mlflow`, which cannot run a Python under /root (pyenv) or in
a private checkout. The launcher then builds, once per machine and lock file, a virtual
environment of a system Python that account can run, from the image's hash-locked
`docker/server-requirements.txt`, in `/var/lib/cifar-mlflow` (root's, readable by all): the
same packages the server image installs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cifar_mlflow.server.account import Account, ServerError
from cifar_mlflow.server.postgres import PROGRAM_ENV

REQUIREMENTS = Path(__file__).resolve().parents[2] / "docker" / "server-requirements.txt"
BUILT_ENVIRONMENTS = Path("/var/lib/cifar-mlflow")
# The lock file is compiled for the image's Python minor version.
LOCKED_PYTHON = "3.11"
SYSTEM_PYTHONS = (f"/usr/bin/python{LOCKED_PYTHON}", f"/usr/local/bin/python{LOCKED_PYTHON}")
BUILD_TIMEOUT_S = 1200


def server_python(account: Account) -> Path:
    """`CIFAR_MLFLOW_SERVER_PYTHON`, else this interpreter when `account` can run it with
    mlflow[auth], else the environment built from the lock file (built now if absent)."""
    chosen = os.environ.get("CIFAR_MLFLOW_SERVER_PYTHON")
    if chosen:
        if not _runs_mlflow(account, Path(chosen)):
            raise ServerError(
                f"the {account.name} user cannot run {chosen} with mlflow[auth]; unset "
                "CIFAR_MLFLOW_SERVER_PYTHON or point it at an environment it can run"
            )
        return Path(chosen)
    if _runs_mlflow(account, Path(sys.executable)):
        return Path(sys.executable)
    built = built_environment() / "bin" / "python"
    if not _runs_mlflow(account, built):
        _build(built.parent.parent, account)
    return built


def built_environment() -> Path:
    """Where the environment of the current lock file lives (one per lock file)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return BUILT_ENVIRONMENTS / f"server-python-{digest}"


def _runs_mlflow(account: Account, python: Path) -> bool:
    probe = subprocess.run(
        [*account.switch, str(python), "-c", "import mlflow.server.auth"],
        capture_output=True,
        env=PROGRAM_ENV,
    )
    return probe.returncode == 0


def _build(target: Path, account: Account) -> None:
    system_python = next(
        (Path(p) for p in SYSTEM_PYTHONS if Path(p).exists() and _runs(account, Path(p))), None
    )
    if system_python is None:
        raise ServerError(
            f"the {account.name} user can run no Python {LOCKED_PYTHON} to build the server's "
            f"environment from; install python{LOCKED_PYTHON} (Debian: apt-get install "
            f"python{LOCKED_PYTHON}-venv) or set CIFAR_MLFLOW_SERVER_PYTHON"
        )
    print(f"Building the server's environment in {target} (once)...", file=sys.stderr)
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # A killed build leaves an environment that cannot import mlflow: it is built anew.
    shutil.rmtree(target, ignore_errors=True)
    for step in (
        [str(system_python), "-m", "venv", str(target)],
        [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
         "--require-hashes", "--no-deps", "-r", str(REQUIREMENTS)],
    ):  # fmt: skip
        done = subprocess.run(
            step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, umask=0o022
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise ServerError(f"building the server's environment failed: {detail[-1]}")
    target.chmod(0o755)


def _runs(account: Account, python: Path) -> bool:
    return subprocess.run([*account.switch, str(python), "-c", ""]).returncode == 0
