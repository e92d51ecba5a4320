"""Issue 20's classes of attack, each written against what MLflow itself accepts, on the
launcher's server (the session's `tracking_server`, which runs the image's entrypoint).

The spellings come from MLflow's own parsers: `handlers._get_request_message` (JSON bodies
through Flask's `get_json(force=True)`, so any JSON encoding Python detects, double-encoded
strings for legacy clients, and protobuf's `ParseDict`, which takes a field's proto name and its
json_name alike) and werkzeug's `Authorization.from_header` (scheme in any case, blanks around
the credentials). Throttle attacks come from loopback addresses of their own (127.0.0.x) and
usernames of their own, so they never block another test.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from cifar_mlflow.server.account import hand_over, service_account
from cifar_mlflow.server.interpreter import built_environment
from cifar_mlflow.server.launcher import TrackingServer, ensure_secrets
from cifar_mlflow.server.postgres import PROGRAM_ENV, Postgres
from tests.fixtures.server import CALLER_PASSWORD, new_data_dir
from tests.test_server_security import admin, call

REPO = Path(__file__).resolve().parent.parent
JSON = "application/json"
OUTSIDE = "file:///tmp/cifar-mlflow-outside"
CREATE_ROUTES = ("/api/2.0/mlflow/experiments/create", "/ajax-api/2.0/mlflow/experiments/create")
# Login routes of both kinds: Flask's (REST and ajax) and FastAPI's native artifact router.
LOGIN_ROUTES = (
    "/api/2.0/mlflow/experiments/search?max_results=1",
    "/ajax-api/2.0/mlflow/experiments/search?max_results=1",
    "/api/2.0/mlflow-artifacts/artifacts/anything.txt",
)
JSON_CAP = 8 * 1024**2


def create_bodies(name: str, location: str) -> dict[str, tuple[bytes, str]]:
    """Every body form in which MLflow's parser reads `location` as the artifact location."""
    snake = {"name": name, "artifact_location": location}
    camel = {"name": name, "artifactLocation": location}
    text = json.dumps(snake)
    return {
        "snake_case": (text.encode(), JSON),
        "camelCase json_name": (json.dumps(camel).encode(), JSON),
        "double-encoded string": (json.dumps(text).encode(), JSON),
        "escaped key": (
            text.replace("artifact_location", "artifact\\u005flocation").encode(),
            JSON,
        ),
        "duplicate key, last wins": (
            f'{{"name": "{name}", "artifact_location": "mlflow-artifacts:/decoy", '
            f'"artifact_location": "{location}"}}'.encode(),
            JSON,
        ),
        "utf-8 with BOM": (b"\xef\xbb\xbf" + text.encode(), JSON),
        "utf-16": (json.dumps(camel).encode("utf-16"), f"{JSON}; charset=utf-16"),
        "utf-32, declared latin-1": (text.encode("utf-32"), f"{JSON}; charset=latin-1"),
    }


BODY_FORMS = list(create_bodies("x", "y"))


def experiment(server: TrackingServer, name: str) -> dict | None:
    path = f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={quote(name)}"
    response = call(server, path, auth=admin(server))
    return json.loads(response.content)["experiment"] if response.status == 200 else None


@pytest.mark.e2e
@pytest.mark.parametrize("route", CREATE_ROUTES)
@pytest.mark.parametrize("form", BODY_FORMS)
def test_class1_outside_locations_are_refused_in_every_form_mlflow_reads(
    tracking_server: TrackingServer, route: str, form: str
) -> None:
    def create(location: str) -> tuple[str, http.client.HTTPResponse]:
        name = f"form-{uuid.uuid4().hex[:12]}"
        data, content_type = create_bodies(name, location)[form]
        response = call(
            tracking_server, route, auth=admin(tracking_server), method="POST", data=data,
            headers={"Content-Type": content_type},
        )  # fmt: skip
        return name, response

    # MLflow reads this form: a location inside the store is stored as sent...
    inside = f"mlflow-artifacts:/{uuid.uuid4().hex}"
    name, accepted = create(inside)
    assert accepted.status == 200, accepted.content
    assert experiment(tracking_server, name)["artifact_location"] == inside
    # ...so one outside it, in the same form, must be refused before anything is stored.
    name, refused = create(OUTSIDE)
    assert refused.status == 400, refused.content
    assert b"outside the server's artifact store" in refused.content
    assert experiment(tracking_server, name) is None


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("method", "content_type", "in_query"),
    [("GET", JSON, True), ("PUT", JSON, False), ("PATCH", JSON, False),
     ("POST", "application/x-www-form-urlencoded", False), ("POST", "text/plain", False),
     ("POST", JSON, True)],
)  # fmt: skip
def test_class1_forms_mlflow_does_not_read_create_nothing(
    tracking_server: TrackingServer, method: str, content_type: str, in_query: bool
) -> None:
    # The query string (read by MLflow for GET requests only), form bodies and other methods.
    name = f"form-{uuid.uuid4().hex[:12]}"
    fields = f"name={name}&artifact_location={quote(OUTSIDE)}"
    path = f"{CREATE_ROUTES[0]}?{fields}" if in_query else CREATE_ROUTES[0]
    data = b"" if in_query else fields.encode()
    response = call(
        tracking_server, path, auth=admin(tracking_server), method=method, data=data,
        headers={"Content-Type": content_type},
    )  # fmt: skip
    assert response.status != 200, response.content
    assert experiment(tracking_server, name) is None


@pytest.mark.e2e
@pytest.mark.parametrize("route", ["/api/3.0/mlflow/workspaces", "/ajax-api/3.0/mlflow/workspaces"])
def test_class1_no_workspace_can_set_an_artifact_root(
    tracking_server: TrackingServer, route: str
) -> None:
    # MLflow's other route that sets where artifacts go; the server runs without workspaces.
    body = {"name": f"ws-{uuid.uuid4().hex[:8]}", "default_artifact_root": OUTSIDE}
    response = call(tracking_server, route, auth=admin(tracking_server), method="POST", body=body)
    assert response.status != 200, response.content


def basic_token(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode()


# Every way werkzeug's parser (and so MLflow's basic auth) reads Basic credentials.
AUTH_FORMS = (
    "Basic {}",
    "basic {}",
    "BASIC {}",
    "bAsIc {}",
    "Basic   {}",
    "Basic \t{}",
    "Basic {}\t ",
)


def attempt(
    server: TrackingServer, source: str, authorization: str | bytes, route: str = LOGIN_ROUTES[0],
    **headers: str,
) -> int:  # fmt: skip
    return call(
        server, route, source=source, headers={"Authorization": authorization, **headers}
    ).status


@pytest.mark.e2e
def test_class2_guesses_in_every_form_mlflow_accepts_are_counted(
    tracking_server: TrackingServer,
) -> None:
    attacker, username = "127.0.0.21", tracking_server.admin_username
    statuses = []
    for i in range(10):
        guess = AUTH_FORMS[i % len(AUTH_FORMS)].format(basic_token(username, f"guess-{i}"))
        statuses.append(attempt(tracking_server, attacker, guess, LOGIN_ROUTES[i % 3]))
    # Each is a failed login; had any form gone uncounted, the 11th would not be refused.
    assert statuses == [401] * 10
    right = basic_token(username, tracking_server.admin_password)
    assert attempt(tracking_server, attacker, f"BASIC  {right}", LOGIN_ROUTES[2]) == 429


@pytest.mark.e2e
def test_class3_proxy_headers_from_a_client_do_not_change_its_address(
    tracking_server: TrackingServer,
) -> None:
    # From 127.0.0.1, where uvicorn would trust proxy headers by default and every local
    # account connects; a username of its own, so that nobody else is blocked.
    attacker, framed, username = "127.0.0.1", "127.0.0.23", f"spoof-{uuid.uuid4().hex[:8]}"
    spoofs = [
        ("X-Forwarded-For", "10.0.0.{}"),
        ("X-Forwarded-For", "10.0.5.{}, " + framed),
        ("Forwarded", "for=10.0.1.{}"),
        ("X-Real-IP", "10.0.2.{}"),
        # The guard's own header, in the spellings WSGI maps onto it.
        ("X-Cifar-Guard-Client", "10.0.3.{}"),
        ("x-cifar_guard_client", "10.0.4.{}"),
        ("X_CIFAR_GUARD_CLIENT", framed),
    ]

    def guess(i: int, source: str, header: str, value: str) -> int:
        authorization = f"Basic {basic_token(username, f'guess-{i}')}"
        return attempt(tracking_server, source, authorization, **{header: value.format(i)})

    guesses = [guess(i, attacker, *spoofs[i % len(spoofs)]) for i in range(10)]
    assert guesses == [401] * 10
    assert guess(10, attacker, "X-Forwarded-For", "10.9.9.9") == 429
    # The address it named has no failure on record.
    assert guess(11, framed, "X-Forwarded-For", "10.9.9.9") == 401


@pytest.fixture(scope="module")
def victim(tracking_server: TrackingServer) -> tuple[str, str]:
    user = (f"victim-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
    created = call(
        tracking_server, "/api/2.0/mlflow/users/create", auth=admin(tracking_server),
        method="POST", body={"username": user[0], "password": user[1]},
    )  # fmt: skip
    assert created.status == 200, created.content
    return user


@pytest.mark.e2e
def test_class4_a_lockout_holds_one_username_and_leaves_others_and_health(
    tracking_server: TrackingServer, victim: tuple[str, str]
) -> None:
    shared, elsewhere = "127.0.0.24", "127.0.0.25"
    username, password = victim
    guesses = [
        attempt(tracking_server, shared, f"Basic {basic_token(username, f'guess-{i}')}")
        for i in range(11)
    ]
    assert guesses == [401] * 10 + [429]
    assert attempt(tracking_server, shared, f"Basic {basic_token(username, password)}") == 429
    # Everyone else on the same address (the launcher's 127.0.0.1) carries on.
    admin_login = f"Basic {basic_token(*admin(tracking_server))}"
    assert attempt(tracking_server, shared, admin_login) == 200
    assert call(tracking_server, "/health", source=shared).status == 200
    assert attempt(tracking_server, elsewhere, f"Basic {basic_token(username, password)}") == 200


@pytest.mark.e2e
def test_class4_spraying_many_usernames_hits_the_address_ceiling(
    tracking_server: TrackingServer,
) -> None:
    sprayer = "127.0.0.26"

    def spray(i: int) -> int:
        return attempt(tracking_server, sprayer, f"Basic {basic_token(f'spray-{i}', 'guess')}")

    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(spray, range(50)))
    assert statuses.count(401) == 50, statuses
    assert attempt(tracking_server, sprayer, f"Basic {basic_token(*admin(tracking_server))}") == 429
    assert call(tracking_server, "/health", source=sprayer).status == 200


def connection(server: TrackingServer, source: str) -> http.client.HTTPSConnection:
    host, port = server.uri.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(server.ca_file))
    return http.client.HTTPSConnection(
        host, int(port), context=context, source_address=(source, 0), timeout=20
    )


@pytest.mark.e2e
def test_class5_a_declared_oversized_body_is_refused_before_login_and_before_it_is_sent(
    tracking_server: TrackingServer,
) -> None:
    link = connection(tracking_server, "127.0.0.27")
    link.putrequest("POST", CREATE_ROUTES[0])
    link.putheader("Content-Type", JSON)
    link.putheader("Content-Length", str(JSON_CAP + 1))
    link.endheaders()  # not one byte of the body follows
    response = link.getresponse()
    assert response.status == 413
    link.close()


@pytest.mark.e2e
def test_class5_a_chunked_body_is_cut_off_at_the_cap(tracking_server: TrackingServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(JSON_CAP // 2**20 + 2):
            yield b" " * 2**20

    link = connection(tracking_server, "127.0.0.28")
    link.request(
        "POST", CREATE_ROUTES[0], body=chunks(), headers={"Content-Type": JSON},
        encode_chunked=True,
    )  # fmt: skip
    assert link.getresponse().status == 413
    link.close()


@pytest.mark.e2e
def test_class5_artifact_uploads_have_their_own_larger_cap(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    client = MlflowClient()
    run = client.create_run(client.create_experiment(server_env["MLFLOW_EXPERIMENT_NAME"]))
    model = tmp_path / "weights.bin"
    model.write_bytes(b"w" * (JSON_CAP + 2**20))
    client.log_artifact(run.info.run_id, str(model))
    back = client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "back"))
    assert Path(back).stat().st_size == model.stat().st_size


MALFORMED_AUTHORIZATION = (
    "Bearer abc",
    "Negotiate YIIB",
    "Digest username=admin, realm=mlflow",
    "Token a=b",
    "Basic",
    "Basic ",
    "Basic !!!!",
    f"Basic {base64.b64encode(b'no-colon').decode()}",
    f"Basic {base64.b64encode(b':').decode()}",
    f"Basic {base64.b64encode(bytes([0xFF, 0xFE, 0x3A, 0x80])).decode()}",
    f"Basic {base64.b64encode('ädmin:pässword'.encode()).decode()}",
    f"Basic {base64.b64encode(b'admin:pw' + bytes([0])).decode()}",
    f"Basic {base64.b64encode(b'ad' + bytes([0]) + b'min:pw').decode()}",
    b"Basic \xff\xfe\x80",
    b"\xc3\xa4 abc",
    "Basic=abc",
)


@pytest.mark.e2e
def test_class6_any_malformed_authorization_is_a_401(tracking_server: TrackingServer) -> None:
    answers = {
        (repr(header), route): attempt(tracking_server, f"127.0.1.{i * 3 + j}", header, route)
        for i, header in enumerate(MALFORMED_AUTHORIZATION)
        for j, route in enumerate(LOGIN_ROUTES)
    }
    assert {key: status for key, status in answers.items() if status != 401} == {}
    log = (tracking_server.data_dir / "mlflow.log").read_text(errors="replace")
    assert "Traceback" not in log


def server_processes(server: TrackingServer) -> list[psutil.Process]:
    """MLflow's processes and PostgreSQL's."""
    state = json.loads((server.data_dir / "server.json").read_text())
    mlflow_server = psutil.Process(state["pid"])
    postmaster_pid = int((server.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(postmaster_pid)
    return [
        mlflow_server,
        *mlflow_server.children(recursive=True),
        postmaster,
        *postmaster.children(recursive=True),
    ]


@pytest.mark.e2e
def test_class6_the_log_is_written_through_the_rotating_writer(
    tracking_server: TrackingServer,
) -> None:
    writers = [
        p for p in server_processes(tracking_server) if "rotating_log.py" in " ".join(p.cmdline())
    ]
    assert len(writers) == 1
    assert writers[0].cmdline()[-1] == str(tracking_server.data_dir / "mlflow.log")


@pytest.mark.e2e
def test_class7_no_password_in_any_server_process_environment(
    tracking_server: TrackingServer,
) -> None:
    secrets_dir = tracking_server.data_dir / "secrets"
    # The Flask key signs sessions and is no password; MLflow reads it from the environment.
    passwords = [path.read_text() for path in secrets_dir.iterdir() if "password" in path.name] + [
        CALLER_PASSWORD
    ]
    processes = server_processes(tracking_server)
    assert len(processes) >= 6  # entrypoint, uvicorn, 2 workers, the log writer, postmaster...
    leaks = [
        (process.pid, process.name())
        for process in processes
        for text in (
            Path(f"/proc/{process.pid}/environ").read_bytes().decode(errors="replace"),
            " ".join(process.cmdline()),
        )
        if any(password in text for password in passwords)
    ]
    assert leaks == []


@pytest.mark.parametrize("command", ["start", "certificate", "backup", "restore"])
def test_class8_secret_folders_inside_a_git_work_tree_are_refused(
    tmp_path: Path, command: str
) -> None:
    from click.testing import CliRunner

    from cifar_mlflow.server.cli import server

    (tmp_path / "repo" / ".git").mkdir(parents=True)
    inside = tmp_path / "repo" / "deep" / "folder"
    arguments = {
        "start": ["--data-dir", str(inside)],
        "certificate": ["--out", str(inside)],
        "backup": ["--data-dir", str(tmp_path), "--to", str(inside)],
        "restore": ["--data-dir", str(inside), "--from", str(tmp_path)],
    }[command]
    result = CliRunner().invoke(server, [command, *arguments])
    assert result.exit_code == 2, result.output
    assert "inside the git work tree" in result.output
    assert not (tmp_path / "repo" / "deep").exists()


@pytest.mark.e2e
def test_class8_the_servers_database_role_is_no_superuser(tracking_server: TrackingServer) -> None:
    state = json.loads((tracking_server.data_dir / "server.json").read_text())
    password = (tracking_server.data_dir / "secrets" / "postgres_password").read_text()
    with psycopg2.connect(
        host="127.0.0.1", port=state["postgres_port"], user="mlflow", password=password,
        dbname="mlflow",
    ) as db, db.cursor() as cursor:  # fmt: skip
        cursor.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        )
        assert cursor.fetchone() == (False, False, False, False, False)
        cursor.execute("SELECT datname FROM pg_database WHERE datdba = 'mlflow'::regrole")
        assert sorted(row[0] for row in cursor.fetchall()) == ["mlflow", "mlflow_auth"]


def test_class8_a_cluster_whose_superuser_was_mlflow_is_demoted_on_start() -> None:
    data_dir = new_data_dir()
    account = service_account()
    try:
        secret_files = ensure_secrets(data_dir)
        postgres = Postgres(data_dir, account)
        postgres.cluster.mkdir(mode=0o700)
        hand_over(data_dir, account)
        # The cluster as launchers before this role's demotion created it.
        subprocess.run(
            [*account.switch, str(postgres.bin_dir / "initdb"), "-D", str(postgres.cluster),
             "-U", "mlflow", f"--pwfile={secret_files['postgres_password']}",
             "--auth=scram-sha-256", "--no-locale"],
            check=True, capture_output=True, env=PROGRAM_ENV,
        )  # fmt: skip
        try:
            postgres.start()
            with psycopg2.connect(
                host="127.0.0.1", port=postgres.port, user="mlflow", dbname="mlflow",
                password=secret_files["postgres_password"].read_text(),
            ) as db, db.cursor() as cursor:  # fmt: skip
                cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                assert cursor.fetchone() == (False,)
        finally:
            postgres.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def handshake(server: TrackingServer, version: ssl.TLSVersion, ciphers: str | None) -> bool:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    host, port = server.uri.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return True
        except ssl.SSLError:
            return False


@pytest.mark.e2e
def test_class8_tls_offers_aead_suites_only(tracking_server: TrackingServer) -> None:
    cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256"
    assert not handshake(tracking_server, ssl.TLSVersion.TLSv1_2, cbc)
    assert handshake(tracking_server, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(tracking_server, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert handshake(tracking_server, ssl.TLSVersion.TLSv1_3, None)


@pytest.mark.e2e
def test_class8_mlflow_telemetry_is_off(tracking_server: TrackingServer) -> None:
    state = json.loads((tracking_server.data_dir / "server.json").read_text())
    mlflow_server = psutil.Process(state["pid"])
    for process in [mlflow_server, *mlflow_server.children(recursive=True)]:
        assert process.environ().get("MLFLOW_DISABLE_TELEMETRY") == "true", process.cmdline()


@pytest.mark.e2e
def test_class9_the_server_needs_nothing_under_root_or_in_the_checkout(
    tracking_server: TrackingServer,
) -> None:
    state = json.loads((tracking_server.data_dir / "server.json").read_text())
    mlflow_server = psutil.Process(state["pid"])
    for process in [mlflow_server, *mlflow_server.children(recursive=True)]:
        places = [*process.cmdline(), process.cwd(), process.environ().get("PYTHONPATH", "")]
        for place in places:
            assert not place.startswith(("/root", str(REPO))), (process.cmdline(), place)
    uvicorn = next(p for p in mlflow_server.children(recursive=True) if "uvicorn" in p.cmdline())
    if sys.executable.startswith("/root") and os.geteuid() == 0:
        # The service account cannot run this Python: the launcher built one from the lock file.
        assert Path(uvicorn.cmdline()[0]) == built_environment() / "bin" / "python"
