"""The stream shape every protocol is routed by: a flat, lower-case header map with pseudo-headers.

A request of any protocol is seen by routing as a ``HeaderLookup``: ``lookup(name)`` gives the value of a
lower-case header name, or None. Beside the protocol's own headers it answers the pseudo-headers:

- ``:service``, ``:rpc-method``, ``:rpc-version``: for gRPC from ``:path`` (``/pkg.Svc/Method``), for SOFA
  Bolt and Dubbo from their header fields; absent for plain HTTP;
- ``:method``, ``:path``, ``:authority``: HTTP's verb, target and host (HTTP/1.1 and HTTP/2 alike).

Each protocol builds its lookup lazily, so a request nothing routes on pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

HeaderLookup = Callable[[str], "str | None"]

SERVICE = ":service"
RPC_METHOD = ":rpc-method"
RPC_VERSION = ":rpc-version"
METHOD = ":method"
PATH = ":path"
AUTHORITY = ":authority"


def lookup_from_mapping(headers: Mapping[str, str]) -> HeaderLookup:
    """For frames whose headers are already a flat ``str`` map (Bolt, Dubbo): names are matched lower-case."""
    lowered: dict[str, str] | None = None

    def lookup(name: str) -> str | None:
        nonlocal lowered
        value = headers.get(name)
        if value is not None:
            return value
        if lowered is None:
            lowered = {k.lower(): v for k, v in headers.items()}
        return lowered.get(name)

    return lookup


def lookup_from_pairs(
    pairs: Iterable[tuple[bytes, bytes]], extra: Mapping[str, str] | None = None
) -> HeaderLookup:
    """For HTTP/1.1 and HTTP/2 header lists; ``extra`` adds pseudo-headers (first value of a name wins)."""
    table: dict[str, str] | None = None

    def lookup(name: str) -> str | None:
        nonlocal table
        if table is None:
            table = dict(extra) if extra else {}
            for raw_name, raw_value in pairs:
                key = raw_name.decode("latin-1").lower()
                if key not in table:
                    table[key] = raw_value.decode("latin-1")
        return table.get(name)

    return lookup
