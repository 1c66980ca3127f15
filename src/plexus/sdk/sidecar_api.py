"""A tiny JSON client for the sidecar's local API (DESIGN.md §1), on ``http.client`` so the SDK stays light.

Control traffic only: a few requests at start and stop, and a poll per subscribed service. One connection per
request keeps it simple and safe to use from any thread.
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Final
from urllib.parse import quote

from plexus.core.address import parse_host_port
from plexus.sdk.errors import SidecarApiError, SidecarUnavailableError

DEFAULT_TIMEOUT: Final = 5.0  # a local API that takes longer than this is broken, not slow


class SidecarApi:
    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self._host, self._port = parse_host_port(address, "sidecar_api", allow_zero=False)
        self._timeout = timeout

    def probe(self, timeout: float) -> bool:
        """Whether a sidecar answers ``GET /ready`` within ``timeout`` (ready or still starting)."""
        try:
            status, _ = self._request("GET", "/ready", None, timeout)
        except OSError:
            return False
        # 503 is a sidecar that is there but not ready yet (e.g. still connecting to the registry): the app
        # belongs to it all the same, so it is mesh mode.
        return status in (200, 503)

    def require(self, timeout: float) -> None:
        try:
            status, body = self._request("GET", "/ready", None, timeout)
        except OSError as exc:
            raise SidecarUnavailableError(self.address, str(exc) or type(exc).__name__) from None
        if status not in (200, 503):
            raise SidecarUnavailableError(self.address, f"GET /ready answered {status}: {_detail(body)}")

    def put_provider(self, service: str, port: int, protocol: str, version: str,
                     metadata: dict[str, str]) -> Any:
        body = {"port": port, "protocol": protocol, "version": version, "metadata": metadata}
        return self._json("PUT", f"/v1/providers/{quote(service, safe='')}", body)

    def delete_provider(self, service: str) -> None:
        self._json("DELETE", f"/v1/providers/{quote(service, safe='')}", None, ok_missing=True)

    def put_consumer(self, service: str) -> str:
        """Declare interest in ``service``; returns the sidecar's egress address for it."""
        reply = self._json("PUT", f"/v1/consumers/{quote(service, safe='')}", {})
        address = reply.get("address") if isinstance(reply, dict) else None
        if not isinstance(address, str):
            raise SidecarApiError("PUT", f"/v1/consumers/{service}", 200, f"no 'address' in {reply!r}")
        return address

    def get_service(self, service: str) -> dict[str, Any]:
        reply = self._json("GET", f"/v1/services/{quote(service, safe='')}", None, ok_missing=True)
        return reply if isinstance(reply, dict) else {}

    # internals
    def _json(self, method: str, path: str, body: Any, ok_missing: bool = False) -> Any:
        status, data = self._request(method, path, body, self._timeout)
        if status == 404 and ok_missing:
            return {}
        if not 200 <= status < 300:
            raise SidecarApiError(method, path, status, _detail(data))
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except ValueError:
            raise SidecarApiError(method, path, status, f"reply is not JSON: {data[:200]!r}") from None

    def _request(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except http.client.HTTPException as exc:
            raise OSError(f"sidecar API {method} {path}: {exc!r}") from None
        finally:
            conn.close()


def _detail(body: bytes) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(value, dict) and "error" in value:
        return str(value["error"])
    return str(value)[:200]
