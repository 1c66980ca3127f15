"""httpx transports that balance calls to a service in-process (direct mode).

Per request: pick an endpoint from the subscription (round robin), point the URL at it, say which service is
meant (``Host`` and ``x-plexus-service``, so a meshed provider's sidecar routes it), and send it through an
ordinary pooled httpx transport. A failure that happened before any byte reached an app is retried once on
another endpoint: a refused or timed-out connect, or a sidecar's local reply whose reason says so
(``x-plexus-error: local_app_unavailable`` ...). A dropped keep-alive connection, or a provider sidecar's
``502 upstream_reset`` (its app died with the request in flight), is retried only for idempotent methods,
since the request may have been read; the consumer sidecar does the same.

Imported only by ``Client.http_client`` (httpx is heavy).
"""

from __future__ import annotations

import time
from typing import Final

import httpx

from plexus.core.reasons import (
    ERROR_HEADER,
    RETRIABLE_BEFORE_SEND,
    UNKNOWN_SERVICE,
    UPSTREAM_RESET,
    parse_error_header,
)
from plexus.sdk.balancing import RoundRobin
from plexus.sdk.subscription import Subscription

SERVICE_HEADER: Final = "x-plexus-service"
RETRIES: Final = 1  # the brief: one more endpoint; more would multiply load when a whole service is down
FIRST_SET_WAIT: Final = 3.0  # a call right after subscribing waits this long for the registry's first push
# A sidecar that answers unknown_service was reached through a stale set (its app just unpublished): nothing
# reached an app, so another endpoint may take the call, as for the reasons retriable before send.
RETRIABLE_REASONS: Final = RETRIABLE_BEFORE_SEND | {UNKNOWN_SERVICE}
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_BEFORE_SEND: Final = (httpx.ConnectError, httpx.ConnectTimeout)
_MAYBE_SENT: Final = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Picker:
    """What the sync and async transports share: endpoint choice and request rewriting."""

    def __init__(self, service: str, subscription: Subscription, balancer: RoundRobin | None) -> None:
        self.service = service
        self.subscription = subscription
        self.balancer = balancer or RoundRobin()

    def addresses(self) -> list[str]:
        return [i.address for i in self.subscription.instances if i.protocol == "http"]

    def pick(self, request: httpx.Request, tried: list[str]) -> str:
        address = self.balancer.pick(self.addresses(), tried)
        if address is None:
            version = self.subscription.version
            known = "no set received yet" if version is None else f"set version {version}"
            more = f" besides {', '.join(tried)}" if tried else ""
            raise httpx.ConnectError(
                f"plexus: no endpoint for service {self.service!r}{more} ({known})", request=request
            )
        host, _, port = address.rpartition(":")
        request.url = request.url.copy_with(scheme="http", host=host.strip("[]"), port=int(port))
        request.headers["host"] = self.service
        request.headers[SERVICE_HEADER] = self.service
        return address

    @staticmethod
    def replayable(request: httpx.Request) -> bool:
        return isinstance(request.stream, httpx.ByteStream)

    @staticmethod
    def retriable_reply(request: httpx.Request, response: httpx.Response) -> bool:
        value = response.headers.get(ERROR_HEADER)
        if response.status_code < 502 or value is None:
            return False
        reason = parse_error_header(value)
        return reason in RETRIABLE_REASONS or (reason == UPSTREAM_RESET and request.method in IDEMPOTENT)


class BalancingTransport(httpx.BaseTransport):
    def __init__(self, service: str, subscription: Subscription, *, balancer: RoundRobin | None = None,
                 inner: httpx.BaseTransport | None = None) -> None:
        self._picker = _Picker(service, subscription, balancer)
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        picker = self._picker
        if picker.subscription.current is None:
            picker.subscription.wait(FIRST_SET_WAIT)
        replayable = picker.replayable(request)
        tried: list[str] = []
        while True:
            address = picker.pick(request, tried)
            tried.append(address)
            can_retry = replayable and len(tried) <= RETRIES
            try:
                response = self._inner.handle_request(request)
            except _BEFORE_SEND:
                picker.balancer.eject(address)
                if can_retry:
                    continue
                raise
            except _MAYBE_SENT:
                if can_retry and request.method in IDEMPOTENT:
                    continue
                raise
            if can_retry and picker.retriable_reply(request, response):
                picker.balancer.eject(address)
                response.close()
                continue
            return response

    def close(self) -> None:
        self._inner.close()


class AsyncBalancingTransport(httpx.AsyncBaseTransport):
    def __init__(self, service: str, subscription: Subscription, *, balancer: RoundRobin | None = None,
                 inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._picker = _Picker(service, subscription, balancer)
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import asyncio  # here, so that the sync client does not load asyncio

        picker = self._picker
        deadline = time.monotonic() + FIRST_SET_WAIT
        while picker.subscription.current is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the set arrives on another thread; never block the app's loop
        replayable = picker.replayable(request)
        tried: list[str] = []
        while True:
            address = picker.pick(request, tried)
            tried.append(address)
            can_retry = replayable and len(tried) <= RETRIES
            try:
                response = await self._inner.handle_async_request(request)
            except _BEFORE_SEND:
                picker.balancer.eject(address)
                if can_retry:
                    continue
                raise
            except _MAYBE_SENT:
                if can_retry and request.method in IDEMPOTENT:
                    continue
                raise
            if can_retry and picker.retriable_reply(request, response):
                picker.balancer.eject(address)
                await response.aclose()
                continue
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()
