"""gRPC channels for a service (``Client.grpc_channel``), for apps written with grpcio.

Mesh mode: a plain insecure channel to the sidecar's egress port for the service; the sidecar balances.
Direct mode: ``BalancedChannel``, a ``grpc.Channel`` that keeps one ordinary channel per instance of the
service and picks one per call, round robin, following the registry's pushes.

Why per-instance channels and not grpc's own ``ipv4:a,b`` target with ``round_robin``, re-created on each
change: a stub binds its multicallables to the channel once, when it is made, so the app's channel object must
stay the same across changes either way; re-creating a channel would cancel the calls in flight on the old
one (or leave the SDK tracking when it drains), while per-instance channels let a change open and close
only the channels of the instances that came and went. Picking in the SDK also shares the HTTP transport's
balancer (round robin that skips an endpoint that just refused) and lets a call that never left be retried
once on another instance.

Every channel (both modes) says the service's name as ``:authority`` (``grpc.default_authority``), which is
what a meshed provider's sidecar routes on when several services share its ingress.

Imported only by ``Client.grpc_channel`` (grpcio is heavy).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import grpc

from plexus.core.reasons import ERROR_HEADER, RETRIABLE_BEFORE_SEND, UNKNOWN_SERVICE, parse_error_header
from plexus.discovery.model import ServiceSet
from plexus.sdk.balancing import RoundRobin
from plexus.sdk.subscription import Subscription

AUTHORITY_OPTION: Final = "grpc.default_authority"
FIRST_SET_WAIT: Final = 3.0  # as the HTTP transport: a call right after subscribing waits for the first push
# A removed instance's channel closes this long after the registry withdrew it: closing cancels calls still
# running on it, and a provider that unpublishes keeps serving for its grace (1 s by default) before it stops.
RETIRE_SECONDS: Final = 10.0
RETRIES: Final = 1  # one more instance, as the HTTP transport; more would multiply load when all are down
# grpc core's words when the channel had no connection to send on (pick_first found no address to connect
# to): the request never left this process, so another instance may take it.
_NOT_SENT_MARKERS: Final = ("failed to connect to all addresses",)
# A sidecar's local reply that says nothing reached an app (its app just unpublished, a connect failed).
RETRIABLE_REASONS: Final = RETRIABLE_BEFORE_SEND | {UNKNOWN_SERVICE}

Options = Sequence[tuple[str, Any]]


def channel_options(service: str, options: Options | None) -> list[tuple[str, Any]]:
    """The caller's options, plus ``:authority`` = the service unless the caller set one."""
    merged = list(options or ())
    if not any(name == AUTHORITY_OPTION for name, _ in merged):
        merged.append((AUTHORITY_OPTION, service))
    return merged


def mesh_channel(service: str, egress: str, options: Options | None, compression: Any) -> grpc.Channel:
    return grpc.insecure_channel(egress, options=channel_options(service, options), compression=compression)


class NoEndpointError(grpc.RpcError, grpc.Call):  # type: ignore[misc]  # grpc has no type stubs
    """No instance of the service to call: raised at the call, as grpc's own UNAVAILABLE would be."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._message

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class _Endpoint:
    """One instance: its own channel, and the connectivity it last reported (while someone watches)."""

    __slots__ = ("address", "channel", "retire_at", "state", "watcher")

    def __init__(self, address: str, channel: grpc.Channel) -> None:
        self.address = address
        self.channel = channel
        self.retire_at: float | None = None
        self.state: Any = None  # grpc.ChannelConnectivity, known only while the balanced channel is watched
        self.watcher: Callable[[Any], None] | None = None


_STATE_ORDER: Final = ("READY", "CONNECTING", "IDLE", "TRANSIENT_FAILURE", "SHUTDOWN")


class BalancedChannel(grpc.Channel):  # type: ignore[misc]  # grpc has no type stubs
    """A ``grpc.Channel`` over every instance of ``service`` that speaks gRPC, picked per call."""

    def __init__(self, service: str, subscription: Subscription, *, options: Options | None = None,
                 compression: Any = None, balancer: RoundRobin | None = None,
                 on_close: Callable[[BalancedChannel], None] | None = None) -> None:
        self.service = service
        self.subscription = subscription
        self.balancer = balancer or RoundRobin()
        self._options = channel_options(service, options)
        self._compression = compression
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._retiring: dict[str, _Endpoint] = {}
        self._watchers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._aggregate: Any = None
        self._closed = False
        self._on_close = on_close
        subscription.on_change(self._on_set)

    # what the app sees
    @property
    def addresses(self) -> list[str]:
        with self._lock:
            return list(self._endpoints)

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: Any = False) -> grpc.UnaryUnaryMultiCallable:
        return _UnaryUnary(self, "unary_unary", method, request_serializer, response_deserializer)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> grpc.UnaryStreamMultiCallable:
        return _UnaryStream(self, "unary_stream", method, request_serializer, response_deserializer)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: Any = False) -> grpc.StreamUnaryMultiCallable:
        return _StreamUnary(self, "stream_unary", method, request_serializer, response_deserializer)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: Any = False) -> grpc.StreamStreamMultiCallable:
        return _StreamStream(self, "stream_stream", method, request_serializer, response_deserializer)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Connectivity of the whole set, as grpc's round_robin reports it: READY if any instance is ready,
        else CONNECTING, IDLE, TRANSIENT_FAILURE in that order (IDLE before any instance reported, and
        TRANSIENT_FAILURE when there is no instance)."""
        with self._lock:
            self._watchers.append(callback)
            endpoints = list(self._endpoints.values())
        for endpoint in endpoints:
            self._watch(endpoint, try_to_connect)
        self._publish_state(new_watcher=callback)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        with self._lock:
            if callback in self._watchers:
                self._watchers.remove(callback)
            last = not self._watchers
            endpoints = list(self._endpoints.values())
        if last:
            for endpoint in endpoints:
                self._unwatch(endpoint)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            endpoints = [*self._endpoints.values(), *self._retiring.values()]
            self._endpoints.clear()
            self._retiring.clear()
            self._watchers.clear()
        self.subscription.remove_callback(self._on_set)
        for endpoint in endpoints:
            endpoint.channel.close()
        if self._on_close is not None:
            self._on_close(self)

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<plexus BalancedChannel {self.service!r} over {self.addresses}>"

    # choosing an instance per call
    def pick(self, tried: Sequence[str]) -> _Endpoint:
        if self.subscription.current is None:
            self.subscription.wait(FIRST_SET_WAIT)
        self._close_retired()
        with self._lock:
            if self._closed:
                raise ValueError(f"the gRPC channel for {self.service!r} is closed")
            endpoints = self._endpoints
            # Prefer instances not known to be failing (grpc's round_robin skips TRANSIENT_FAILURE too).
            failing = [a for a, e in endpoints.items()
                       if e.state is not None and e.state.name == "TRANSIENT_FAILURE"]
            addresses = [a for a in endpoints if a not in failing] or list(endpoints)
            address = self.balancer.pick(addresses, tried)
            if address is None and failing:
                address = self.balancer.pick(list(endpoints), tried)
            endpoint = endpoints.get(address) if address is not None else None
        if endpoint is None:
            version = self.subscription.version
            known = "no set received yet" if version is None else f"set version {version}"
            more = f" besides {', '.join(tried)}" if tried else ""
            raise NoEndpointError(f"plexus: no gRPC instance of {self.service!r}{more} ({known})")
        return endpoint

    # following the registry
    def _on_set(self, service_set: ServiceSet) -> None:
        wanted = [i.address for i in service_set.instances if i.protocol == "grpc"]
        added: list[_Endpoint] = []
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            for address in wanted:
                if address in self._endpoints:
                    continue
                endpoint = self._retiring.pop(address, None)
                if endpoint is None:
                    channel = grpc.insecure_channel(address, options=self._options,
                                                    compression=self._compression)
                    endpoint = _Endpoint(address, channel)
                    added.append(endpoint)
                endpoint.retire_at = None
                self._endpoints[address] = endpoint
            for address in [a for a in self._endpoints if a not in wanted]:
                endpoint = self._endpoints.pop(address)
                endpoint.retire_at = now + RETIRE_SECONDS
                self._retiring[address] = endpoint
            watched = bool(self._watchers)
        if watched:
            for endpoint in added:
                self._watch(endpoint, True)
            self._publish_state()
        self._close_retired()

    def _close_retired(self) -> None:
        if not self._retiring:
            return
        now = time.monotonic()
        with self._lock:
            done = [e for e in self._retiring.values() if e.retire_at is not None and e.retire_at <= now]
            for endpoint in done:
                del self._retiring[endpoint.address]
        for endpoint in done:
            endpoint.channel.close()

    # connectivity, only while the app watches it
    def _watch(self, endpoint: _Endpoint, try_to_connect: bool) -> None:
        if endpoint.watcher is not None:
            return  # watched already (another watcher of the balanced channel came first)

        def on_state(state: grpc.ChannelConnectivity, endpoint: _Endpoint = endpoint) -> None:
            endpoint.state = state
            self._publish_state()

        endpoint.watcher = on_state
        endpoint.channel.subscribe(on_state, try_to_connect=try_to_connect)

    def _unwatch(self, endpoint: _Endpoint) -> None:
        if endpoint.watcher is not None:
            endpoint.channel.unsubscribe(endpoint.watcher)
            endpoint.watcher = None
        endpoint.state = None

    def _publish_state(self, new_watcher: Callable[[Any], None] | None = None) -> None:
        """Tell every watcher the aggregate state when it changed, and ``new_watcher`` in any case."""
        with self._lock:
            states = {e.state.name if e.state is not None else "IDLE" for e in self._endpoints.values()}
            name = next((n for n in _STATE_ORDER if n in states), "TRANSIENT_FAILURE")
            if name == "SHUTDOWN":
                name = "TRANSIENT_FAILURE"
            aggregate = grpc.ChannelConnectivity[name]
            if aggregate != self._aggregate:
                self._aggregate = aggregate
                watchers = list(self._watchers)
            elif new_watcher is not None and new_watcher in self._watchers:
                watchers = [new_watcher]
            else:
                return
        for watcher in watchers:
            watcher(aggregate)


def _retriable(error: grpc.RpcError) -> bool:
    """Whether a failed call surely never reached an app: a sidecar's local reply whose reason says so
    (whatever gRPC code it maps to: ``unknown_service`` is UNIMPLEMENTED), or no connection to send on."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_HEADER and isinstance(value, str):
            return parse_error_header(value) in RETRIABLE_REASONS
    code = getattr(error, "code", None)
    if code is None or code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (error.details() or "") if hasattr(error, "details") else ""
    return any(marker in details for marker in _NOT_SENT_MARKERS)


class _Balanced:
    """What the four multicallables share: one inner multicallable per instance channel, made on first use."""

    def __init__(self, channel: BalancedChannel, kind: str, method: str, serializer: Any,
                 deserializer: Any) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._inner: dict[int, tuple[grpc.Channel, Any]] = {}

    def _callable(self, endpoint: _Endpoint) -> Any:
        known = self._inner.get(id(endpoint.channel))
        if known is not None and known[0] is endpoint.channel:
            return known[1]
        if len(self._inner) > 4 * max(1, len(self._channel.addresses)):
            self._inner.clear()  # instances came and went; forget the closed ones' callables
        made = getattr(endpoint.channel, self._kind)(
            self._method, request_serializer=self._serializer, response_deserializer=self._deserializer)
        self._inner[id(endpoint.channel)] = (endpoint.channel, made)
        return made

    def _call_with_retry(self, attribute: str, request: Any, kwargs: dict[str, Any]) -> Any:
        tried: list[str] = []
        while True:
            endpoint = self._channel.pick(tried)
            tried.append(endpoint.address)
            target = self._callable(endpoint)
            try:
                return _invoke(target, attribute, request, kwargs)
            except grpc.RpcError as error:
                if len(tried) > RETRIES or not _retriable(error):
                    raise
                self._channel.balancer.eject(endpoint.address)

    def _call_once(self, attribute: str, request: Any, kwargs: dict[str, Any]) -> Any:
        return _invoke(self._callable(self._channel.pick(())), attribute, request, kwargs)


def _invoke(target: Any, attribute: str, request: Any, kwargs: dict[str, Any]) -> Any:
    return getattr(target, attribute)(request, **kwargs) if attribute else target(request, **kwargs)


class _UnaryUnary(_Balanced, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]
    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._call_with_retry("", request, kwargs)

    def with_call(self, request: Any, **kwargs: Any) -> Any:
        return self._call_with_retry("with_call", request, kwargs)

    def future(self, request: Any, **kwargs: Any) -> Any:
        return self._call_once("future", request, kwargs)


class _UnaryStream(_Balanced, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]
    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._call_once("", request, kwargs)


class _StreamUnary(_Balanced, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]
    # A request iterator can be read only once, so a stream call is never retried.
    def __call__(self, request_iterator: Iterator[Any], **kwargs: Any) -> Any:
        return self._call_once("", request_iterator, kwargs)

    def with_call(self, request_iterator: Iterator[Any], **kwargs: Any) -> Any:
        return self._call_once("with_call", request_iterator, kwargs)

    def future(self, request_iterator: Iterator[Any], **kwargs: Any) -> Any:
        return self._call_once("future", request_iterator, kwargs)


class _StreamStream(_Balanced, grpc.StreamStreamMultiCallable):  # type: ignore[misc]
    def __call__(self, request_iterator: Iterator[Any], **kwargs: Any) -> Any:
        return self._call_once("", request_iterator, kwargs)
