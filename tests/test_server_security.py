"""The security table of docs/team-server.md, row by row, against the launcher's server.

The session's server (`tracking_server`) runs `docker/mlflow-server.sh`, the image's entrypoint,
so each row probes the configuration docker-compose deploys. Attacks that trip the login
throttle come from loopback addresses of their own (127.0.0.x), so the other tests of the
session, which connect from 127.0.0.1, are never blocked.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import ssl
import stat
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from cifar_guard.artifacts import confine
from cifar_guard.asgi import Guard
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_mlflow.server.launcher import SERVER_SCRIPT, TrackingServer

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def call(
    server: TrackingServer,
    path: str = SEARCH,
    *,
    auth: tuple[str, str] | None = None,
    source: str = "127.0.0.1",
    method: str = "GET",
    body: dict | None = None,
    data: bytes | None = None,
    headers: dict[str, str | bytes] | None = None,
) -> http.client.HTTPResponse:
    """One HTTPS request from the loopback address `source`, trusting the server's CA, with
    `body` as JSON or `data` as it is."""
    host, port = server.uri.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(server.ca_file))
    connection = http.client.HTTPSConnection(
        host, int(port), context=context, source_address=(source, 0), timeout=60
    )
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        all_headers["Authorization"] = f"Basic {token}"
    payload = json.dumps(body) if body else data
    connection.request(method, path, body=payload, headers=all_headers)
    response = connection.getresponse()
    response.content = response.read()
    connection.close()
    return response


def admin(server: TrackingServer) -> tuple[str, str]:
    return server.admin_username, server.admin_password


@pytest.mark.e2e
def test_plain_http_to_the_port_gets_no_answer(tracking_server: TrackingServer) -> None:
    plain = tracking_server.uri.replace("https://", "http://")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{plain}/health", timeout=10)
    # Nor does a client that does not trust the server's CA send it a password.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{tracking_server.uri}{SEARCH}", auth=admin(tracking_server), timeout=10)


@pytest.mark.e2e
def test_password_guessing_is_throttled_per_address(tracking_server: TrackingServer) -> None:
    attacker, member = "127.0.0.3", "127.0.0.2"
    guesses = [
        call(tracking_server, auth=("admin", f"guess-{i}"), source=attacker).status
        for i in range(12)
    ]
    assert guesses[:10] == [401] * 10
    assert guesses[10:] == [429, 429]
    # Blocked even with the right password, while others log in normally.
    assert call(tracking_server, auth=admin(tracking_server), source=attacker).status == 429
    assert call(tracking_server, auth=admin(tracking_server), source=member).status == 200


@pytest.mark.e2e
def test_a_wrong_password_costs_the_same_for_unknown_users(
    tracking_server: TrackingServer,
) -> None:
    def seconds(username: str) -> float:
        started = time.perf_counter()
        response = call(tracking_server, auth=(username, uuid.uuid4().hex), source="127.0.0.4")
        assert response.status == 401
        return time.perf_counter() - started

    # Interleaved, so that load from elsewhere hits both kinds alike; 8 stays under the throttle.
    known, unknown = [], []
    for _ in range(4):
        known.append(seconds(tracking_server.admin_username))
        unknown.append(seconds(f"nobody-{uuid.uuid4().hex[:8]}"))
    # Without the equal cost an unknown user is answered ~3× faster (no password hash).
    assert statistics.median(unknown) > 0.6 * statistics.median(known), (known, unknown)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "location",
    ["file:///tmp/outside", "/tmp/outside", "mlflow-artifacts:/../outside", "s3://bucket/x",
     "mlflow-artifacts://attacker.example/x"],
)  # fmt: skip
def test_artifact_locations_outside_the_store_are_refused_even_for_the_admin(
    server_env: dict[str, str], location: str
) -> None:
    client = MlflowClient()
    # MLflow refuses a host-addressed mlflow-artifacts URI itself; the store refuses the rest.
    refused = "outside the server's artifact store|addresses a host other than"
    with pytest.raises(MlflowException, match=refused):
        client.create_experiment(server_env["MLFLOW_EXPERIMENT_NAME"], artifact_location=location)
    assert client.get_experiment_by_name(server_env["MLFLOW_EXPERIMENT_NAME"]) is None


@pytest.mark.e2e
def test_an_experiment_in_the_store_is_created(server_env: dict[str, str]) -> None:
    client = MlflowClient()
    name = server_env["MLFLOW_EXPERIMENT_NAME"]
    experiment_id = client.create_experiment(name, artifact_location=f"mlflow-artifacts:/{name}")
    assert client.get_experiment(experiment_id).artifact_location == f"mlflow-artifacts:/{name}"


@pytest.mark.e2e
@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_foreign_origins_are_refused(tracking_server: TrackingServer, method: str) -> None:
    for origin in ("http://localhost:8888", "https://attacker.example"):
        response = call(
            tracking_server, auth=admin(tracking_server), method=method,
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )  # fmt: skip
        assert response.status == 403, origin
        assert response.getheader("access-control-allow-origin") is None
    own = call(
        tracking_server, auth=admin(tracking_server), headers={"Origin": tracking_server.uri}
    )
    assert own.status == 200


@pytest.mark.e2e
def test_only_the_servers_own_host_and_port_are_accepted(tracking_server: TrackingServer) -> None:
    port = tracking_server.uri.rsplit(":", 1)[1]
    expected = {f"attacker.example:{port}": 403, "localhost:1": 403, f"localhost:{port}": 200}
    for host, status in expected.items():
        response = call(tracking_server, auth=admin(tracking_server), headers={"Host": host})
        assert response.status == status, host


@pytest.mark.e2e
def test_the_server_runs_unprivileged_with_private_files(tracking_server: TrackingServer) -> None:
    state = json.loads((tracking_server.data_dir / "server.json").read_text())
    server = psutil.Process(state["pid"])
    processes = [server, *server.children(recursive=True)]
    assert len(processes) >= 3  # mlflow server, uvicorn, its workers
    assert all(process.uids().effective != 0 for process in processes)
    loose = [
        f"{path} {stat.filemode(path.stat().st_mode)}"
        for path in [tracking_server.data_dir, *tracking_server.data_dir.rglob("*")]
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]
    assert not loose, loose


def script_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A configuration the entrypoint accepts up to `mlflow server`, with `overrides`."""
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("not checked before mlflow starts")
    good = "s" * 24
    env = {
        "PATH": os.environ["PATH"],
        "POSTGRES_PASSWORD": good,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": good,
        "MLFLOW_TLS_CERT_FILE": str(tmp_path / "cert.pem"),
        "MLFLOW_TLS_KEY_FILE": str(tmp_path / "key.pem"),
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "CIFAR_GUARD_STATE": str(tmp_path / "throttle.sqlite"),
    }
    return {**env, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"POSTGRES_PASSWORD": "x" * 23}, "POSTGRES_PASSWORD needs at least 24 characters"),
        ({"MLFLOW_AUTH_ADMIN_PASSWORD": "change-me-admin-Rk8vLs2mZZZZZZ"}, "an example value"),
        ({"MLFLOW_FLASK_SERVER_SECRET_KEY": ""}, "set MLFLOW_FLASK_SERVER_SECRET_KEY"),
        ({"MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": "short"}, "cannot read short"),
        ({"MLFLOW_TLS_KEY_FILE": ""}, "the server speaks only TLS"),
        ({"MLFLOW_ALLOWED_HOSTS": "*"}, "exact names, not patterns: *"),
        ({"MLFLOW_ALLOWED_HOSTS": "lab.example:*"}, "exact names, not patterns"),
    ],
)
def test_the_entrypoint_refuses_weak_configurations(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        ["bash", str(SERVER_SCRIPT)],
        env=script_env(tmp_path, **overrides),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


class RecordingStore:
    """A tracking store's `create_experiment`, recording what reaches it."""

    def __init__(self) -> None:
        self.created: list[tuple] = []

    def create_experiment(self, name, artifact_location=None, tags=None):
        self.created.append((name, artifact_location, tags))
        return "1"


def test_the_store_refuses_locations_outside_it_and_passes_the_rest() -> None:
    store = RecordingStore()
    confine(store)
    outside = ["file:///srv/shared", "mlflow-artifacts:/a/%2E%2E/%2e%2e/x", "mlflow-artifacts:x",
               "mlflow-artifacts:/x?y=1", "mlflow-artifacts:/a\\..\\x"]  # fmt: skip
    for location in outside:
        with pytest.raises(MlflowException, match="outside the server's artifact store"):
            store.create_experiment("outside", location)
    for location in (None, "", "mlflow-artifacts:/team/x"):
        store.create_experiment("inside", location)
    assert [created[1] for created in store.created] == [None, "", "mlflow-artifacts:/team/x"]


def through_guard(method: str, path: str, chunks: list[bytes], declared: int | None) -> tuple:
    """A request sent through the guard (caps of 10 bytes, 100 for uploads) to an app that
    reads its body chunk by chunk; returns the status and the bytes the app received."""
    received: list[bytes] = []
    statuses: list[int] = []
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]

    async def app(scope, receive, send) -> None:
        more = True
        while more:
            message = await receive()
            received.append(message["body"])
            more = message["more_body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "client": ("127.0.0.1", 50000)}  # fmt: skip
    guard = Guard(app, origins=[], max_body_bytes=10, max_upload_bytes=100)
    asyncio.run(guard(scope, receive, send))
    return statuses[0], b"".join(received)


UPLOAD = "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pt"


def test_bodies_are_capped_by_route_declared_or_streamed() -> None:
    api = "/api/2.0/mlflow/experiments/create"
    assert through_guard("POST", api, [b"x" * 10], 10) == (200, b"x" * 10)
    assert through_guard("POST", api, [b"x" * 11], 11) == (413, b"")
    # Chunked: the app sees the chunks up to the cap, never the rest.
    assert through_guard("POST", api, [b"x" * 6] * 5, None) == (413, b"x" * 6)
    assert through_guard("PUT", UPLOAD, [b"x" * 60], 60) == (200, b"x" * 60)
    assert through_guard("PUT", UPLOAD, [b"x" * 60] * 2, None) == (413, b"x" * 60)
    assert through_guard("PUT", UPLOAD, [], 101) == (413, b"")
    # Only uploads get the upload cap.
    assert through_guard("POST", UPLOAD, [b"x" * 60], 60) == (413, b"")
