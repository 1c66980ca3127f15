"""Load balancers: pure, each picks one endpoint from a cluster's list.

Every balancer is rebuilt (``rebuild``) when the endpoint list changes and asked (``pick``) once per request.
``exclude`` names an endpoint a retry must avoid when another exists; ``hash_key`` feeds ring hash.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from plexus.core.errors import ConfigError
from plexus.proxy.endpoint import Endpoint

RING_POINTS_PER_WEIGHT_100: Final = (
    100  # Envoy's minimum ring is 1024 for any size; 100 per host keeps ~10% spread
)


class LoadBalancer(Protocol):
    def rebuild(self, endpoints: Sequence[Endpoint]) -> None: ...
    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None: ...


class _Base:
    __slots__ = ("_endpoints", "_rng")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._endpoints: list[Endpoint] = []
        self._rng = rng or random.Random()

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = list(endpoints)

    def _other_than(self, exclude: Endpoint) -> Endpoint | None:
        others = [e for e in self._endpoints if e is not exclude]
        return self._rng.choice(others) if others else exclude


class RoundRobin(_Base):
    __slots__ = ("_next",)

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._next = 0

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        endpoints = self._endpoints
        n = len(endpoints)
        if n == 0:
            return None
        i = self._next % n
        self._next = i + 1
        chosen = endpoints[i]
        if chosen is exclude and n > 1:
            chosen = endpoints[(i + 1) % n]
            self._next = i + 2
        return chosen


class RandomLB(_Base):
    __slots__ = ()

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        if not self._endpoints:
            return None
        chosen = self._rng.choice(self._endpoints)
        return self._other_than(exclude) if chosen is exclude else chosen


class LeastRequest(_Base):
    """Power of two choices: sample two endpoints, take the one with fewer active requests."""

    __slots__ = ()

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        endpoints = self._endpoints
        n = len(endpoints)
        if n == 0:
            return None
        if n == 1:
            return endpoints[0]
        a, b = self._rng.sample(endpoints, 2)
        if a is exclude:
            return b
        if b is exclude:
            return a
        return a if a.active <= b.active else b


class Weighted(_Base):
    """Smooth weighted round robin (nginx): each pick adds weights, takes the largest, subtracts the total."""

    __slots__ = ("_current", "_total")

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        self._current: list[int] = []
        self._total = 0

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        super().rebuild(endpoints)
        self._current = [0] * len(self._endpoints)
        self._total = sum(e.weight for e in self._endpoints)

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        endpoints = self._endpoints
        if not endpoints:
            return None
        current = self._current
        best = -1
        best_value = 0
        for i, endpoint in enumerate(endpoints):
            current[i] += endpoint.weight
            if (best < 0 or current[i] > best_value) and (endpoint is not exclude or len(endpoints) == 1):
                best, best_value = i, current[i]
        current[best] -= self._total
        return endpoints[best]


class RingHash(_Base):
    """Consistent hashing on a request header: adding one endpoint to N moves about 1/(N+1) of the keys."""

    __slots__ = ("_blake2b", "_hashes", "_owners")

    def __init__(self, rng: random.Random | None = None) -> None:
        super().__init__(rng)
        from hashlib import blake2b  # (here: hashlib adds 0.6 MiB to a sidecar that never hashes to a ring)

        self._blake2b = blake2b
        self._hashes: list[int] = []
        self._owners: list[Endpoint] = []

    def _hash64(self, data: bytes) -> int:
        return int.from_bytes(self._blake2b(data, digest_size=8).digest(), "big")

    def rebuild(self, endpoints: Sequence[Endpoint]) -> None:
        super().rebuild(endpoints)
        points: list[tuple[int, Endpoint]] = []
        for endpoint in self._endpoints:
            count = max(1, RING_POINTS_PER_WEIGHT_100 * endpoint.weight // 100)
            key = endpoint.key.encode()
            points.extend((self._hash64(b"%s_%d" % (key, i)), endpoint) for i in range(count))
        points.sort(key=lambda p: p[0])
        self._hashes = [p[0] for p in points]
        self._owners = [p[1] for p in points]

    def pick(self, exclude: Endpoint | None = None, hash_key: bytes | None = None) -> Endpoint | None:
        if not self._endpoints:
            return None
        if hash_key is None:
            chosen = self._rng.choice(self._endpoints)
        else:
            i = bisect.bisect_left(self._hashes, self._hash64(hash_key))
            chosen = self._owners[i % len(self._owners)]
        if chosen is exclude:
            return self._other_than(exclude)
        return chosen


POLICIES: Final[dict[str, Callable[[], LoadBalancer]]] = {
    "round_robin": RoundRobin,
    "least_request": LeastRequest,
    "random": RandomLB,
    "weighted": Weighted,
    "ring_hash": RingHash,
}


def make_balancer(policy: str) -> LoadBalancer:
    factory = POLICIES.get(policy)
    if factory is None:
        raise ConfigError("lb_policy", f"{policy!r} is not one of {sorted(POLICIES)}")
    return factory()
