"""``connect()`` and the Client: one API over two modes.

Mode ``mesh``: a sidecar runs beside the app; the SDK only talks to its local API and sends calls to its
egress.
Mode ``direct``: no sidecar; the SDK publishes to and subscribes from the registry itself and balances calls
in-process. ``connect()`` picks the mode by probing the sidecar's ``/ready`` briefly.

Heavy imports wait until they are needed: grpc through the registry client in direct mode or when a gRPC
channel is asked for, httpx only when an HTTP client is asked for.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from plexus.core.errors import ValidationError
from plexus.discovery.model import PROTOCOLS, validate_service_name
from plexus.sdk import settings
from plexus.sdk.errors import ClientClosedError, SdkError
from plexus.sdk.settings import Mode
from plexus.sdk.sidecar_api import SidecarApi
from plexus.sdk.subscription import Subscription

if TYPE_CHECKING:
    import grpc
    import httpx

log = logging.getLogger("plexus.sdk")

# After unpublishing, a provider keeps serving this long: calls already in flight finish, and callers that
# picked this instance just before the registry's push reached them still find it up.
DEFAULT_UNPUBLISH_GRACE: Final = 1.0
REGISTRY_CONNECT_WAIT: Final = 2.0  # direct mode: how long connect() waits for the registry before going on
SUBSCRIBE_WAIT: Final = 2.0  # subscribe(): how long to wait for the first set, so addresses are meaningful
_HOST_SAFE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")


class _Backend(Protocol):
    mode: str

    @property
    def connected(self) -> bool: ...
    def publish(self, service: str, port: int, protocol: str, version: str,
                metadata: Mapping[str, str]) -> Any: ...
    def unpublish(self, service: str) -> bool: ...
    def unpublish_all(self) -> list[str]: ...
    def subscribe(self, service: str, protocol: str | None = None) -> Subscription: ...
    def close(self) -> None: ...


class Client:
    """A connection to the mesh: publish services, subscribe to services, call them over HTTP."""

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._closed = False
        self._published_any = False
        self._balanced: dict[str, Subscription] = {}
        self._http_clients: list[Any] = []
        self._grpc_channels: list[Any] = []

    @property
    def mode(self) -> Mode:
        return "mesh" if self._backend.mode == "mesh" else "direct"

    @property
    def connected(self) -> bool:
        """Whether the sidecar (mesh) or the registry (direct) is reachable now."""
        return self._backend.connected

    @property
    def sidecar_api(self) -> str | None:
        from plexus.sdk.mesh import MeshBackend

        return self._backend.api.address if isinstance(self._backend, MeshBackend) else None

    # providers
    def publish(self, service: str, port: int, *, protocol: str = "http", version: str = "",
                metadata: Mapping[str, str] | None = None) -> None:
        """Publish this app's ``port`` as an instance of ``service`` (one instance per service per client).

        ``protocol``: what the app speaks on ``port``, one of ``http``, ``grpc``, ``bolt``, ``dubbo``,
        ``tcp``. Direct mode publishes ``PLEXUS_ADVERTISE_HOST:port``; mesh mode asks the sidecar, which
        publishes its own ingress and forwards to ``127.0.0.1:port``. Publishing again replaces the earlier
        instance.
        """
        self._check_open("publish")
        _check_protocol(protocol)
        self._backend.publish(service, port, protocol, version, dict(metadata or {}))
        self._published_any = True

    def unpublish(self, service: str) -> bool:
        """Withdraw ``service``; False when this client had not published it."""
        self._check_open("unpublish")
        return self._backend.unpublish(service)

    # consumers
    def subscribe(self, service: str, *, protocol: str | None = None,
                  wait: float = SUBSCRIBE_WAIT) -> Subscription:
        """Follow ``service``'s instances. Waits up to ``wait`` seconds for the first set (0: do not wait).

        ``protocol`` (``http``, ``grpc``, ``bolt``, ``dubbo``, ``tcp``) keeps only the instances that speak
        it; None keeps all. In mesh mode the sidecar's egress for the service (``subscription.egress``)
        carries any of them: it tells the protocol from the first bytes a caller sends.
        """
        self._check_open("subscribe")
        if protocol is not None:
            _check_protocol(protocol)
        subscription = self._backend.subscribe(service, protocol)
        if wait > 0 and subscription.current is None:
            subscription.wait(wait)
        return subscription

    def http_client(self, service: str, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` for ``service``: call it with paths (``client.get("/orders/7")``).

        Mesh mode: its base URL is the sidecar's egress for the service, which balances and retries.
        Direct mode: a transport balances over the subscribed instances in-process. ``kwargs`` go to
        ``httpx.Client`` (timeout, headers, ...).
        """
        import httpx

        self._check_open("http_client")
        kwargs.setdefault("timeout", 10.0)
        if self.mode == "mesh":
            base_url = f"http://{self._egress(service)}"
            client = httpx.Client(base_url=base_url, **_with_service_header(service, kwargs))
        else:
            from plexus.sdk.httpx_transport import BalancingTransport

            transport = BalancingTransport(service, self._balanced_subscription(service))
            client = httpx.Client(base_url=f"http://{_url_host(service)}", transport=transport, **kwargs)
        with self._lock:
            self._http_clients.append(client)
        return client

    def async_http_client(self, service: str, **kwargs: Any) -> httpx.AsyncClient:
        """Like ``http_client`` but an ``httpx.AsyncClient``; close it yourself (``await c.aclose()``)."""
        import httpx

        self._check_open("async_http_client")
        kwargs.setdefault("timeout", 10.0)
        if self.mode == "mesh":
            return httpx.AsyncClient(base_url=f"http://{self._egress(service)}",
                                     **_with_service_header(service, kwargs))
        from plexus.sdk.httpx_transport import AsyncBalancingTransport

        transport = AsyncBalancingTransport(service, self._balanced_subscription(service))
        return httpx.AsyncClient(base_url=f"http://{_url_host(service)}", transport=transport, **kwargs)

    def grpc_channel(self, service: str, *, options: Sequence[tuple[str, Any]] | None = None,
                     compression: grpc.Compression | None = None) -> grpc.Channel:
        """A ``grpc.Channel`` for ``service``: make stubs on it as on any channel.

        Mesh mode: an insecure channel to the sidecar's egress for the service, which balances.
        Direct mode: a channel that picks one of the service's gRPC instances per call (round robin),
        follows the registry's pushes, and retries a call once elsewhere when it surely never left (no
        connection could be made). Either way ``:authority`` is the service name (set
        ``grpc.default_authority`` in ``options`` to override), so a meshed provider's sidecar routes the
        call. ``options`` and ``compression`` are those of ``grpc.insecure_channel``. The client closes
        the channel when it closes.
        """
        self._check_open("grpc_channel")
        from plexus.sdk import grpc_channel as grpc_channels  # here: grpcio is heavy

        validate_service_name(service)
        channel: grpc.Channel
        if self.mode == "mesh":
            channel = grpc_channels.mesh_channel(service, self._egress(service), options, compression)
        else:
            channel = grpc_channels.BalancedChannel(service, self._balanced_subscription(service),
                                                    options=options, compression=compression)
        with self._lock:
            self._grpc_channels.append(channel)
        return channel

    def egress(self, service: str) -> str:
        """Mesh mode: the sidecar's local address carrying calls to ``service`` (for non-httpx callers)."""
        self._check_open("egress")
        return self._egress(service)

    # lifecycle
    def close(self, grace: float | None = None) -> None:
        """Unpublish everything first, keep serving ``grace`` seconds (default 1 s if anything was published),
        then stop following the registry or sidecar and close the HTTP clients made here.

        Call it while the app's server still runs, and stop the server after it returns.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        withdrawn = self._backend.unpublish_all()
        if grace is None:
            grace = DEFAULT_UNPUBLISH_GRACE if (withdrawn or self._published_any) else 0.0
        if grace > 0 and (withdrawn or self._published_any):
            time.sleep(grace)
        with self._lock:
            clients, self._http_clients = self._http_clients, []
            channels, self._grpc_channels = self._grpc_channels, []
        for client in clients:
            client.close()
        for channel in channels:
            channel.close()
        self._backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<plexus.sdk.Client mode={self.mode}>"

    # internals
    def _check_open(self, what: str) -> None:
        if self._closed:
            raise ClientClosedError(what)

    def _egress(self, service: str) -> str:
        from plexus.sdk.mesh import MeshBackend

        if not isinstance(self._backend, MeshBackend):
            raise SdkError(f"egress({service!r}): direct mode has no sidecar egress; use http_client() or "
                           "grpc_channel()")
        return self._backend.egress_for(service)

    def _balanced_subscription(self, service: str) -> Subscription:
        """One subscription per service feeds every balancing transport of this client."""
        with self._lock:
            existing = self._balanced.get(service)
        if existing is not None:
            return existing
        subscription = self._backend.subscribe(service)
        with self._lock:
            kept = self._balanced.setdefault(service, subscription)
        if kept is not subscription:
            subscription.close()  # another thread subscribed first
        return kept


def connect(mode: str | None = None, *, sidecar_api: str | None = None, registry: str | None = None,
            advertise_host: str | None = None, probe_timeout: float = settings.PROBE_TIMEOUT,
            registry_wait: float = REGISTRY_CONNECT_WAIT) -> Client:
    """Connect to the local sidecar if one answers, else to the registry.

    ``mode``: None detects (``PLEXUS_MODE`` may force it), ``"mesh"`` requires a sidecar (raises
    SidecarUnavailableError), ``"direct"`` skips the probe. Addresses come from the arguments, then
    ``PLEXUS_SIDECAR_API`` / ``PLEXUS_REGISTRY`` / ``PLEXUS_ADVERTISE_HOST``, then the defaults.
    """
    chosen = settings.forced_mode(mode)
    api = SidecarApi(settings.sidecar_api(sidecar_api))
    if chosen == "mesh":
        api.require(max(probe_timeout, settings.FORCED_MESH_PROBE_TIMEOUT))
    elif chosen is None:
        chosen = "mesh" if api.probe(probe_timeout) else "direct"
    if chosen == "mesh":
        from plexus.sdk.mesh import MeshBackend

        log.info("plexus.sdk: mesh mode through the sidecar at %s", api.address)
        return Client(MeshBackend(api))
    from plexus.sdk.direct import DirectBackend

    host = settings.advertise_host(advertise_host)
    backend = DirectBackend(settings.registry(registry), host, registry_wait)
    log.info("plexus.sdk: direct mode with the registry at %s", backend.registry_address)
    return Client(backend)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValidationError("protocol", f"{protocol!r} is not one of {', '.join(sorted(PROTOCOLS))}")


def _url_host(service: str) -> str:
    # The transport rewrites the URL to an endpoint; this host only has to parse. Names such as
    # "com.acme.Orders:1.0" are not hostnames, so they get a placeholder (the Host header still names them).
    return service if _HOST_SAFE.match(service) else "plexus-service"


def _with_service_header(service: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    headers = dict(kwargs.pop("headers", None) or {})
    headers.setdefault("x-plexus-service", service)
    return {**kwargs, "headers": headers}
