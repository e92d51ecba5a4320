"""What must happen before a request reaches MLflow: origins, body size caps, the client's
address for the login throttle (see `login`).

- Origins: a request that carries an `Origin` other than the server's own is refused (403), so
  no other web page, not even one on `http://localhost`, can make credentialed requests.
- Size caps: a body larger than its route's cap is refused with 413 before MLflow or its
  authentication sees it: a declared `Content-Length` at once, a chunked body as soon as it
  grows past the cap. Artifact uploads (`PUT` to the proxied store, which MLflow streams to
  disk) have their own, larger cap; every other route's body is buffered whole by MLflow's
  WSGI bridge, so its cap is small.
- Client address: the connection's peer (uvicorn replaces it with a proxy's
  `X-Forwarded-For` only for proxies the operator names) goes to MLflow in `CLIENT_HEADER`;
  whatever a client sent under that name, in any spelling, is dropped.
"""

from __future__ import annotations

import json

from cifar_guard.login import CLIENT_HEADER

UPLOAD_PATH_MARKER = "/2.0/mlflow-artifacts/artifacts/"
_CLIENT_HEADER = CLIENT_HEADER.lower().encode()


class BodyTooLarge(Exception):
    """Raised into the app when a chunked body passes its cap."""


class Guard:
    def __init__(self, app, origins: list[str], max_body_bytes: int, max_upload_bytes: int):
        self.app = app
        self.origins = set(origins)
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1")
        if origin and origin not in self.origins:
            return await refuse(send, 403, f"requests from origin {origin} are not allowed")
        cap = self._cap(scope["method"], scope["path"])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > cap:
            return await refuse(send, 413, _too_large(cap))
        address = scope["client"][0] if scope.get("client") else ""
        headers = [(n, v) for n, v in scope["headers"] if _normal(n) != _CLIENT_HEADER]
        headers.append((_CLIENT_HEADER, address.encode("latin-1")))
        scope = {**scope, "headers": headers}
        return await self._capped(scope, receive, send, cap)

    def _cap(self, method: str, path: str) -> int:
        upload = method == "PUT" and UPLOAD_PATH_MARKER in path
        return self.max_upload_bytes if upload else self.max_body_bytes

    async def _capped(self, scope, receive, send, cap: int) -> None:
        received = 0
        exceeded = started = False

        async def counted_receive():
            nonlocal received, exceeded
            message = await receive()
            received += len(message.get("body", b""))
            if received > cap:
                exceeded = True
                raise BodyTooLarge
            return message

        async def tracked_send(message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's error answer to the cut-off body; the guard answers 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            # Raised through MLflow's middlewares, possibly wrapped in an exception group.
            if not exceeded:
                raise
        if exceeded and not started:
            await refuse(send, 413, _too_large(cap))


def _too_large(cap: int) -> str:
    return f"request bodies on this route are limited to {cap} bytes"


def _normal(name: bytes) -> bytes:
    # WSGI turns `-` and `_` alike into `_`: both spellings would reach MLflow as this header.
    return name.lower().replace(b"_", b"-")


async def refuse(send, status: int, message: str) -> None:
    body = {"error_code": _ERROR_CODES[status], "message": message}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


_ERROR_CODES = {403: "PERMISSION_DENIED", 413: "RESOURCE_EXHAUSTED"}
