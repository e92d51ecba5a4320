"""MLflow basic auth's own authentication hook, with failed logins counted and throttled.

Configured as the auth config's `authorization_function`, so it runs wherever MLflow decides a
login, Flask routes and FastAPI routes alike, on MLflow's own reading of the `Authorization`
header: every form MLflow accepts is counted, and no other form logs anyone in.

- A (client address, username) pair, or an address, that failed too often gets 429 before any
  password is checked (`throttle`).
- A wrong password for an unknown user spends one password hash, like a known one, so response
  times do not tell which usernames exist.
- A header that is not Basic, or not a user name and password, is a 401; MLflow's own hook
  answers some of them with a 500.
"""

from __future__ import annotations

import functools
import json
import os
import secrets

from flask import Response, request
from mlflow.server.auth import authenticate_request_basic_auth, make_basic_auth_response, store
from werkzeug.security import check_password_hash, generate_password_hash

from cifar_guard.throttle import LoginThrottle

# Set by the ASGI guard from the connection (or a proxy the operator trusts); any header of
# this name, in any spelling, that a client sends is removed first.
CLIENT_HEADER = "X-Cifar-Guard-Client"
# Same method and cost as the stored hashes (werkzeug's default, which MLflow uses).
DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(24))


@functools.cache
def throttle() -> LoginThrottle:
    return LoginThrottle(os.environ.get("CIFAR_GUARD_STATE", "/tmp/cifar-guard.sqlite"))


def authenticate():
    """The `authorization_function`: MLflow's basic auth, throttled and counted."""
    if request.headers.get("Authorization") is None:
        return make_basic_auth_response()
    address = request.headers.get(CLIENT_HEADER, "")
    try:
        credentials = request.authorization
    except ValueError:  # werkzeug's base64 decoding of non-ASCII credentials
        credentials = None
    # PostgreSQL cannot store a NUL, and MLflow would answer such a name with a 500.
    basic = (
        credentials is not None
        and credentials.type == "basic"
        and "\0" not in credentials.username + credentials.password
    )
    username = credentials.username if basic else ""
    blocked_s = throttle().blocked_for(address, username)
    if blocked_s > 0:
        return _too_many(blocked_s)
    # MLflow's own decision, on its own reading of the header.
    result = authenticate_request_basic_auth() if basic else make_basic_auth_response()
    if isinstance(result, Response):
        if basic and not store.has_user(username):
            # MLflow answers an unknown user without hashing: spend the hash it skipped.
            check_password_hash(DUMMY_HASH, credentials.password)
        throttle().record_failure(address, username)
    return result


def _too_many(blocked_s: float) -> Response:
    body = {
        "error_code": "REQUEST_LIMIT_EXCEEDED",
        "message": "too many failed logins; try again later",
    }
    return Response(
        json.dumps(body),
        status=429,
        mimetype="application/json",
        headers={"Retry-After": str(int(blocked_s) + 1)},
    )
