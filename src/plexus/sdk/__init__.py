"""The app-facing SDK: one API whether a sidecar runs beside the app (mesh mode) or not (direct mode).

    from plexus import sdk

    client = sdk.connect()                 # probes the sidecar's /ready; falls back to the registry
    client.publish("orders", 8080)         # this app serves "orders" on port 8080
    http = client.http_client("payments")  # an httpx.Client; balanced in-process or through the sidecar
    http.get("/charge/7")
    channel = client.grpc_channel("ledger")  # a grpc.Channel for stubs, balanced the same way
    client.publish("quotes", 9090, protocol="grpc")  # http, grpc, bolt, dubbo or tcp
    client.close()                         # unpublish, a short grace, then stop

Importing this package loads neither grpc nor httpx nor asyncio: each is imported when a call needs it.
"""

from plexus.core.errors import ValidationError
from plexus.sdk.client import DEFAULT_UNPUBLISH_GRACE, Client, connect
from plexus.sdk.errors import ClientClosedError, SdkError, SidecarApiError, SidecarUnavailableError
from plexus.sdk.settings import Mode
from plexus.sdk.subscription import Subscription

__all__ = [
    "DEFAULT_UNPUBLISH_GRACE",
    "Client",
    "ClientClosedError",
    "Mode",
    "SdkError",
    "SidecarApiError",
    "SidecarUnavailableError",
    "Subscription",
    "ValidationError",
    "connect",
]
