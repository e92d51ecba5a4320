"""MLflow's basic-auth app, guarded: `mlflow server --app-name cifar-guard`.

What basic auth lacks on a network, each decided where MLflow reads the request its own way:

- `login`: MLflow's authentication hook (the auth config's `authorization_function`), with
  failed logins throttled per (address, username) and per address, equal cost for unknown
  users, and a 401 for any malformed `Authorization`;
- `artifacts`: the tracking store refuses experiments whose artifacts would live outside the
  proxied store, admin included, unless `CIFAR_GUARD_CONFINE_ARTIFACTS=false`;
- `asgi`: before MLflow, foreign origins (`CIFAR_GUARD_ORIGINS`) and oversized bodies
  (`CIFAR_GUARD_MAX_BODY_BYTES`, `CIFAR_GUARD_MAX_UPLOAD_BYTES`) are refused, and the client's
  address is handed to `login`.

Standard library plus MLflow only: the server image installs nothing else.
"""

from __future__ import annotations

import fcntl
import os

MAX_BODY_BYTES = 8 * 1024**2
MAX_UPLOAD_BYTES = 4 * 1024**3


def create_app():
    """The uvicorn app factory registered as `cifar-guard` in the `mlflow.app` group."""
    from mlflow.server import handlers
    from mlflow.server.auth import create_app as create_basic_auth_app

    from cifar_guard.artifacts import confine
    from cifar_guard.asgi import Guard
    from cifar_guard.login import throttle

    state_path = os.environ.get("CIFAR_GUARD_STATE", "/tmp/cifar-guard.sqlite")
    # Unlike `--app-name basic-auth`, a custom app's auth database is set up by each worker;
    # one at a time, or their table creations collide on the first start.
    with open(f"{state_path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        app = create_basic_auth_app()
        throttle()
    if os.environ.get("CIFAR_GUARD_CONFINE_ARTIFACTS", "true") != "false":
        confine(handlers._get_tracking_store())
    return Guard(
        app,
        origins=_split(os.environ.get("CIFAR_GUARD_ORIGINS", "")),
        max_body_bytes=int(os.environ.get("CIFAR_GUARD_MAX_BODY_BYTES", MAX_BODY_BYTES)),
        max_upload_bytes=int(os.environ.get("CIFAR_GUARD_MAX_UPLOAD_BYTES", MAX_UPLOAD_BYTES)),
    )


def _split(names: str) -> list[str]:
    return [name.strip() for name in names.split(",") if name.strip()]
