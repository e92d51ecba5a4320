"""MLflow's basic-auth app behind an ASGI guard: `mlflow server --app-name cifar-guard`.

The guard sits in front of everything MLflow serves (REST API, artifact proxy, UI) and adds
what basic auth lacks on a network:

- throttled logins: after `MAX_FAILURES` failed logins from one client address within
  `WINDOW_S`, that address gets 429 for `BLOCK_S`; the counters live in a SQLite file that
  every uvicorn worker shares (`CIFAR_GUARD_STATE`);
- equal cost: a wrong password for an unknown user spends one password hash, like a known one,
  so response times do not tell which usernames exist;
- confined artifacts: creating an experiment whose artifact location is not inside the proxied
  store (`mlflow-artifacts:/...`) is refused, admin included, unless
  `CIFAR_GUARD_CONFINE_ARTIFACTS=false`;
- origins: a request that carries an `Origin` other than the server's own
  (`CIFAR_GUARD_ORIGINS`, comma-separated) is refused, so that no other web page, not even one
  on `http://localhost`, can make credentialed requests.

Standard library plus MLflow only: the server image installs nothing else.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import os
import secrets
import sqlite3
import time
from urllib.parse import unquote, urlsplit

import anyio.to_thread
from werkzeug.security import check_password_hash, generate_password_hash

MAX_FAILURES = 10
WINDOW_S = 60.0
BLOCK_S = 60.0
EXPERIMENT_CREATE_SUFFIX = "/mlflow/experiments/create"
# Same method and cost as the stored hashes (werkzeug's default, which MLflow uses).
DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(24))


def create_app():
    """The uvicorn app factory registered as `cifar-guard` in the `mlflow.app` group."""
    from mlflow.server.auth import create_app as create_basic_auth_app

    state_path = os.environ.get("CIFAR_GUARD_STATE", "/tmp/cifar-guard.sqlite")
    # Unlike `--app-name basic-auth`, a custom app's auth database is set up by each worker;
    # one at a time, or their table creations collide on the first start.
    with open(f"{state_path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        app = create_basic_auth_app()
    return Guard(
        app,
        state_path=state_path,
        origins=_split(os.environ.get("CIFAR_GUARD_ORIGINS", "")),
        confine_artifacts=os.environ.get("CIFAR_GUARD_CONFINE_ARTIFACTS", "true") != "false",
    )


class LoginThrottle:
    """Failed logins per client address, shared by the workers through one SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS failure (address TEXT, at REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS block (address TEXT PRIMARY KEY, until REAL)")

    def _connect(self) -> sqlite3.Connection:
        # Autocommit; each write takes the file's lock at once, so workers serialize there.
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def blocked_for(self, address: str) -> float:
        """Seconds the address stays blocked, 0 when it may log in."""
        with self._connect() as db:
            row = db.execute("SELECT until FROM block WHERE address = ?", (address,)).fetchone()
        return max(0.0, row[0] - time.time()) if row else 0.0

    def record_failure(self, address: str) -> None:
        now = time.time()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM failure WHERE at < ?", (now - WINDOW_S,))
            db.execute("INSERT INTO failure VALUES (?, ?)", (address, now))
            (count,) = db.execute(
                "SELECT count(*) FROM failure WHERE address = ?", (address,)
            ).fetchone()
            if count >= MAX_FAILURES:
                db.execute("INSERT OR REPLACE INTO block VALUES (?, ?)", (address, now + BLOCK_S))
                db.execute("DELETE FROM failure WHERE address = ?", (address,))
            db.execute("COMMIT")


class Guard:
    """ASGI middleware in front of MLflow's app; see the module docstring."""

    def __init__(
        self, app, state_path: str, origins: list[str], confine_artifacts: bool = True
    ) -> None:
        self.app = app
        self.throttle = LoginThrottle(state_path)
        self.origins = set(origins)
        self.confine_artifacts = confine_artifacts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin and origin not in self.origins:
            return await _refuse(send, 403, f"requests from origin {origin} are not allowed")
        address = scope["client"][0] if scope.get("client") else ""
        blocked_s = self.throttle.blocked_for(address)
        if blocked_s > 0:
            retry = str(int(blocked_s) + 1).encode()
            return await _refuse(
                send, 429, "too many failed logins; try again later", [(b"retry-after", retry)]
            )
        if self.confine_artifacts and scope["path"].endswith(EXPERIMENT_CREATE_SUFFIX):
            body, receive = await _read_body(receive)
            location = _artifact_location(body)
            if location and not _inside_proxied_store(location):
                return await _refuse(
                    send,
                    400,
                    f"artifact location {location} is outside the server's artifact store; "
                    "leave it empty",
                    error_code="INVALID_PARAMETER_VALUE",
                )
        credentials = _basic_credentials(headers.get(b"authorization", b""))
        if credentials is None:
            return await self.app(scope, receive, send)

        async def send_after_failure_cost(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                await anyio.to_thread.run_sync(self._fail, address, *credentials)
            await send(message)

        return await self.app(scope, receive, send_after_failure_cost)

    def _fail(self, address: str, username: str, password: str) -> None:
        from mlflow.server.auth import store

        if not store.has_user(username):
            # MLflow answers an unknown user without hashing: spend the hash it skipped.
            check_password_hash(DUMMY_HASH, password)
        self.throttle.record_failure(address)


def _basic_credentials(header: bytes) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return username, password


async def _read_body(receive):
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay():
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


def _artifact_location(body: bytes) -> str:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return ""  # MLflow itself refuses a malformed request
    location = payload.get("artifact_location") if isinstance(payload, dict) else None
    return location if isinstance(location, str) else ""


def _inside_proxied_store(location: str) -> bool:
    parts = urlsplit(location)
    return (
        parts.scheme == "mlflow-artifacts"
        and not parts.netloc
        and ".." not in unquote(parts.path).replace("\\", "/").split("/")
    )


async def _refuse(send, status: int, message: str, headers=(), error_code: str = "") -> None:
    body = {"error_code": error_code or _ERROR_CODES[status], "message": message}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


_ERROR_CODES = {403: "PERMISSION_DENIED", 429: "REQUEST_LIMIT_EXCEEDED"}


def _split(names: str) -> list[str]:
    return [name.strip() for name in names.split(",") if name.strip()]
