"""The Docker deployment, checked without Docker: compose hardening, secrets as files, pinned
images and hash-locked dependencies, the build contexts' allow-lists, the healthcheck."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from cifar_mlflow.server.launcher import TrackingServer
from cifar_mlflow.server.postgres import free_port

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY")
DOCKERFILES = [REPO / "docker" / "server.Dockerfile", REPO / "docker" / "train.Dockerfile"]


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {name.strip(): value.strip() for name, value in pairs}


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return None


def test_compose_accepts_the_file_with_the_example_env(tmp_path: Path) -> None:
    command = compose_command()
    assert command, "install Debian's docker-compose (scripts/test.sh does) or Docker's plugin"
    options = ["-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), "--profile", "gpu"]
    result = subprocess.run(
        [*command, *options, "config"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"db", "mlflow", "trainer"}
    assert "ports" not in config["services"]["db"]
    (published,) = config["services"]["mlflow"]["ports"]
    # Only this machine, unless the operator names an address.
    assert str(published).startswith("127.0.0.1:5000:5000") or published.get("host_ip") == (
        "127.0.0.1"
    )
    trainer = config["services"]["trainer"]["environment"]
    assert trainer["MLFLOW_TRACKING_URI"].startswith("https://")
    assert trainer["MLFLOW_TRACKING_USERNAME"] != env_example()["MLFLOW_AUTH_ADMIN_USERNAME"]


def test_every_service_is_hardened() -> None:
    for name, service in compose()["services"].items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "cap_add" not in service, name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["tmpfs"], f"{name} needs writable temporary folders"
        for limit in ("mem_limit", "cpus", "pids_limit"):
            assert limit in service, f"{name} lacks {limit}"
        assert service["logging"]["options"]["max-size"], name
        assert service.get("user", "") != "root", name
        assert not service.get("privileged"), name


def test_secrets_are_files_never_environment_values() -> None:
    config = compose()
    declared = set(config["secrets"])
    for name, service in config["services"].items():
        for variable, value in service.get("environment", {}).items():
            if SECRET_NAME.search(variable) and "USERNAME" not in variable:
                assert variable.endswith("_FILE"), f"{name}: {variable} must come from a file"
                assert str(value).startswith("/run/secrets/"), f"{name}: {variable}"
                assert str(value).removeprefix("/run/secrets/") in service["secrets"]
        assert set(service.get("secrets", [])) <= declared
    # The database password reaches only the two services that use it.
    users = {
        n for n, s in config["services"].items() if "postgres_password" in s.get("secrets", [])
    }
    assert users == {"db", "mlflow"}
    superuser = {
        n
        for n, s in config["services"].items()
        if "postgres_superuser_password" in s.get("secrets", [])
    }
    assert superuser == {"db"}
    assert "admin_password" not in config["services"]["trainer"]["secrets"]
    assert not [n for n in env_example() if SECRET_NAME.search(n) and not n.endswith("_DIR")]


def test_the_database_is_internal_and_the_healthcheck_touches_it() -> None:
    config = compose()
    db = config["services"]["db"]
    assert all(config["networks"][network].get("internal") for network in db["networks"])
    volume = db["volumes"][0].split(":")[0]
    assert volume in config["volumes"], "PostgreSQL's data must live in a named volume"
    mlflow_service = config["services"]["mlflow"]
    assert mlflow_service["depends_on"]["db"]["condition"] == "service_healthy"
    assert mlflow_service["healthcheck"]["test"][-1].endswith("healthcheck.py")


def test_images_are_pinned_by_digest_and_packages_by_hash() -> None:
    pulled = [s["image"] for s in compose()["services"].values() if "build" not in s]
    bases = [
        line.split()[1]
        for path in DOCKERFILES
        for line in path.read_text().splitlines()
        if line.startswith("FROM ")
    ]
    assert pulled and bases
    assert all(re.search(r"@sha256:[0-9a-f]{64}$", image) for image in [*pulled, *bases])
    dockerfile = DOCKERFILES[0].read_text()
    assert "--require-hashes" in dockerfile
    assert "-r /tmp/server-requirements.txt" in dockerfile
    lock = (REPO / "docker" / "server-requirements.txt").read_text()
    requirements = re.findall(r"^([A-Za-z0-9_.\[\]-]+)==\S+ \\\n((?:\s+--hash=sha256:\w+.*\n)+)",
                              lock, re.MULTILINE)  # fmt: skip
    pinned = re.findall(r"^[A-Za-z0-9]", lock, re.MULTILINE)
    assert len(requirements) == len(pinned), "every requirement needs a version and hashes"
    assert f"\nmlflow=={mlflow.__version__} \\" in lock


def test_build_contexts_are_allow_lists() -> None:
    for ignore in (REPO / ".dockerignore", REPO / "docker" / ".dockerignore"):
        rules = [
            line for line in ignore.read_text().splitlines() if line and not line.startswith("#")
        ]
        assert rules[0] == "*", f"{ignore} must start by excluding everything"
        allowed = [rule.removeprefix("!") for rule in rules if rule.startswith("!")]
        assert not [rule for rule in allowed if re.search(r"env|secret[^s.]|backup|data", rule)]
    for ignored in (".env", "secrets/admin_password", "checkpoints/x.pt"):
        check = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", ignored])
        assert check.returncode == 0, f"{ignored} must stay git-ignored"


def test_every_image_runs_as_an_unprivileged_user() -> None:
    for path in DOCKERFILES:
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        instructions = [words[0] for words in lines if not words[0].startswith("#")]
        users = [words[1] for words in lines if words[0] == "USER"]
        assert users, f"{path.name} sets no USER: its container would run as root"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) >= 1000, path
        # Nothing after the last USER runs a command as another user.
        after = instructions[len(instructions) - instructions[::-1].index("USER") :]
        assert "RUN" not in after, path.name
    db = compose()["services"]["db"]
    assert db["user"] != "0" and not db["user"].startswith(("0:", "root"))


@pytest.mark.e2e
def test_the_healthcheck_fails_when_the_database_does_not_answer(
    tracking_server: TrackingServer,
) -> None:
    state = json.loads((tracking_server.data_dir / "server.json").read_text())
    env = {
        **os.environ,
        "MLFLOW_PORT": tracking_server.uri.rsplit(":", 1)[1],
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(state["postgres_port"]),
        "POSTGRES_PASSWORD_FILE": str(tracking_server.data_dir / "secrets" / "postgres_password"),
    }
    check = [sys.executable, str(REPO / "docker" / "healthcheck.py")]
    healthy = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert healthy.returncode == 0, healthy.stderr
    no_database = {**env, "POSTGRES_PORT": str(free_port())}
    unhealthy = subprocess.run(check, env=no_database, capture_output=True, text=True, timeout=60)
    assert unhealthy.returncode == 1
    assert "database mlflow does not answer" in unhealthy.stderr
