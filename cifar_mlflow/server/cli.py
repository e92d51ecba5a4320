"""`python -m cifar_mlflow server start|stop|prepare|backup|restore|certificate`: the
launcher from the command line."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from cifar_mlflow.console import Group
from cifar_mlflow.server.account import service_account
from cifar_mlflow.server.backup import backup, restore
from cifar_mlflow.server.interpreter import server_python
from cifar_mlflow.server.launcher import start, stop
from cifar_mlflow.server.places import refuse_inside_work_tree
from cifar_mlflow.server.tls import CertificateFiles, ensure_certificate


@click.group("server", cls=Group)
def server() -> None:
    """Run the team tracking server without Docker (PostgreSQL + mlflow server, basic auth)."""


@server.command("start")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of the database, artifacts and credentials; reuse it to keep the runs.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="Port of the server, on 127.0.0.1.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Your certificate chain (PEM); without it, a CA is generated for this server.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The key of --tls-cert (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The CA certificate clients trust for --tls-cert (PEM).",
)
def start_command(
    data_dir: Path, port: int, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None
) -> None:
    """Start the server and print the variables that point clients at it (`eval` them)."""
    given = [option for option in (tls_cert, tls_key, tls_ca) if option]
    if given and len(given) != 3:
        raise click.UsageError("--tls-cert, --tls-key and --tls-ca go together")
    certificate = CertificateFiles(tls_cert, tls_key, tls_ca) if given else None
    running = start(data_dir, port, certificate)
    for line in running.shell_lines():
        click.echo(line)
    click.echo(
        f"MLflow UI: {running.uri} (user {running.admin_username}); stop it with "
        f"`python -m cifar_mlflow server stop --data-dir {shlex.quote(str(data_dir))}`",
        err=True,
    )


@server.command("stop")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The folder the server was started from.",
)
def stop_command(data_dir: Path) -> None:
    """Stop the server started from --data-dir and its PostgreSQL cluster."""
    stop(data_dir)


@server.command("prepare")
def prepare_command() -> None:
    """Find or build now the Python the server runs as its service account (as root: once per
    machine and lock file, from PyPI), so that `server start` needs no network."""
    click.echo(server_python(service_account()))


@server.command("backup")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The folder of the running server.",
)
@click.option(
    "--to",
    "target",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A new folder outside the checkout; it receives every password too.",
)
def backup_command(data_dir: Path, target: Path) -> None:
    """Back up the runs, users, permissions, artifacts and secrets of a running server."""
    backup(data_dir, target)
    click.echo(f"Backed up {data_dir} to {target}", err=True)


@server.command("restore")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A new data folder to rebuild the server in.",
)
@click.option(
    "--from",
    "source",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A folder written by `server backup`.",
)
def restore_command(data_dir: Path, source: Path) -> None:
    """Rebuild a server from a backup into a new data folder; then `server start` it."""
    restore(data_dir, source)
    click.echo(f"Restored {source} into {data_dir}; start it with `server start`", err=True)


@server.command("certificate")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for server.pem, server-key.pem and ca.pem (the compose file's SECRETS_DIR), "
    "outside any git work tree.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A name or IP clients type to reach the server (repeat); localhost always.",
)
def certificate_command(out: Path, hosts: tuple[str, ...]) -> None:
    """Generate a CA and a server certificate signed by it, for the Docker deployment."""
    refuse_inside_work_tree(out, "the certificate folder")
    files = ensure_certificate(out, [*hosts, "mlflow"])
    click.echo(f"Wrote {files.cert}, {files.key} and {files.ca} (clients trust {files.ca})")
