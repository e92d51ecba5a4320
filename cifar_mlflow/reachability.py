"""Is the tracking server there? A dependency-free check every client imports.

Standard library only, so that the CLI, the tracking code and the analysis can use it on any
system, without the server launcher's Unix-only and PostgreSQL machinery.
"""

from __future__ import annotations

import os
import ssl
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from cifar_mlflow.errors import UserError

REACHABLE_TIMEOUT_S = 5.0


class UnreachableServerError(UserError):
    """The tracking server does not answer; the message is one line, without credentials."""


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def redact_uri(uri: str) -> str:
    """`uri` without the `user:password@` part, fit to print."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def move_uri_credentials_to_environment() -> None:
    """Move `user:password@` out of MLFLOW_TRACKING_URI into MLflow's credential variables.

    MLflow puts the tracking URI as given into what it prints (its run links, the URL of a
    failed request); without credentials in it, none of that can show them. Variables that are
    already set win, as they do over the URI's in MLflow's client.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    parts = urlsplit(uri)
    if not is_server_uri(uri) or parts.username is None:
        return
    os.environ["MLFLOW_TRACKING_URI"] = redact_uri(uri)
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))


def client_tls_context() -> ssl.SSLContext | None:
    """The TLS settings MLflow's own client takes from the environment, for urllib."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert_path) if cert_path else None


def health_url(uri: str) -> str:
    return f"{redact_uri(uri).rstrip('/')}/health"


def healthy(uri: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether the MLflow server at `uri` answers its health check."""
    try:
        with urllib.request.urlopen(
            health_url(uri), timeout=2, context=context or client_tls_context()
        ) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def check_reachable(
    tracking_uri: str,
    timeout_s: float = REACHABLE_TIMEOUT_S,
    context: ssl.SSLContext | None = None,
) -> None:
    """Fail within about `timeout_s`, in one line, when the tracking server cannot be reached.

    MLflow's own client retries with backoff for minutes before it gives up; a server that
    accepts the connection but never answers is caught by the same timeout.
    """
    if not is_server_uri(tracking_uri):
        return
    try:
        urllib.request.urlopen(
            health_url(tracking_uri), timeout=timeout_s, context=context or client_tls_context()
        ).close()
    except urllib.error.HTTPError:
        return  # any answer, 401 included, means a server is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UnreachableServerError(
            f"tracking server {redact_uri(tracking_uri)} is unreachable ({reason})"
        ) from None
