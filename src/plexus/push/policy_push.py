"""The control plane's policy push as a sans-IO state machine: versions, nonces, debounce, ACK/NACK.

Theory of operation
-------------------
The control plane feeds events in (a policy change was accepted; a sidecar connected, said Hello again,
acknowledged a push, disconnected) and calls ``tick()`` whenever ``next_deadline()`` passes. Each call returns
the ``Send`` commands to perform: one snapshot to one sidecar's current stream. Time comes from a ``Clock``
(monotonic seconds for deadlines, wall microseconds for versions), so tests drive it with a fake.

Versions. ``change()`` gives the policy a new version ``max(previous + 1, wall time in µs)``, so versions only
grow, also across restarts (a restarted control plane starts past its stored version and at least at the
wall clock). A sidecar's *desired* version is the version of the last change that changed its
scoped payload: a change that does not touch a sidecar's payload is not pushed to it.

Payloads. The state machine does not compile policy. It is given a ``render(scope)`` function that returns the
payload of a scope (opaque, compared with ``==``: the control plane uses the scoped JSON plus the report
interval); sidecars with equal scopes share one render per flush, so 20,000 sidecars of a few shapes cost a
few renders.

Debounce. A change is compiled and pushed ``debounce`` seconds after the last change of a burst, but never
later than ``max_debounce`` seconds after the burst's first change.

One push in flight. Each push carries a nonce no earlier push to that sidecar had (one flush shares one
nonce across sidecars). While a sidecar has a push unacknowledged nothing else is
sent to it; when the ACK (or NACK) with that nonce arrives, the newest desired version is sent if it is newer
than the one just answered. An answer with another nonce (late, from an old push or an old stream) is ignored.
A NACK records the version and the error; the sidecar keeps its last good snapshot and the next change is
pushed as usual (the NACKed one is not retried on the same stream).

Streams. Each connect opens a new session; events of older sessions are ignored (a reconnect may overtake the
old stream's end). A push in flight when a stream ends is forgotten. A connecting sidecar reports the version
it serves: equal to its desired version, nothing is resent; older, the desired one is sent; newer (the control
plane lost its memory), the policy moves to a version above it and that is sent, so a sidecar never gets an
older version after a newer one.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

P = TypeVar("P")

# Push-to-ACK latency buckets (seconds): from a local ACK (~ms) to a sidecar stuck behind a slow apply.
PUSH_ACK_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DEFAULT_DEBOUNCE: Final = 0.1  # seconds; Istio's PILOT_DEBOUNCE_AFTER is 100 ms
DEFAULT_MAX_DEBOUNCE: Final = 10.0  # seconds; Istio's PILOT_DEBOUNCE_MAX is 10 s
DISCONNECTED_RETENTION: Final = 300.0  # seconds a gone sidecar stays visible in proxy status


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for deadlines; never goes back."""
        ...

    def time_us(self) -> int:
        """Wall-clock microseconds, for versions that keep growing across restarts."""
        ...


class SyncState(enum.Enum):
    SYNCED = "SYNCED"  # the sidecar acknowledged the newest payload compiled for it
    NOT_SENT = "NOT SENT"  # nothing sent yet on this stream, or the newest payload waits to be sent
    STALE = "STALE"  # a push is unacknowledged
    NACKED = "NACKED"  # the sidecar refused the last push and serves its last good snapshot


@dataclass(frozen=True, slots=True)
class Send(Generic[P]):
    """Command: write this snapshot to the sidecar's stream of ``session``."""

    sidecar: str
    session: int
    version: int
    nonce: str
    payload: P


@dataclass(frozen=True, slots=True)
class SidecarStatus:
    sidecar: str
    connected: bool
    connected_at: float  # monotonic
    disconnected_at: float | None
    desired_version: int
    sent_version: int
    acked_version: int
    nacked_version: int
    last_error: str
    state: SyncState


@dataclass(slots=True)
class Histogram:
    """Fixed-bucket histogram (cumulative counts per bound at render time, Prometheus style)."""

    bounds: tuple[float, ...] = PUSH_ACK_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(PUSH_ACK_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass(slots=True)
class _Sidecar(Generic[P]):
    id: str
    scope: Hashable
    session: int = 0
    connected: bool = False
    connected_at: float = 0.0
    disconnected_at: float | None = None
    payload: P | None = None
    desired_version: int = 0
    sent_version: int = 0  # the newest version this stream got (or the sidecar reported serving)
    sent_nonce: str = ""
    sent_at: float | None = None  # not None: that push awaits its answer
    acked_version: int = 0
    nacked_version: int = 0
    last_error: str = ""
    last_nacked: bool = False


class PolicyPushState(Generic[P]):
    def __init__(
        self,
        *,
        clock: Clock,
        render: Callable[[Hashable], P],
        debounce: float = DEFAULT_DEBOUNCE,
        max_debounce: float = DEFAULT_MAX_DEBOUNCE,
        start_version: int = 0,
    ) -> None:
        if debounce < 0 or max_debounce < debounce:
            raise ValueError(f"debounce {debounce} s and max {max_debounce} s: need 0 <= debounce <= max")
        self._clock = clock
        self._render = render
        self._debounce = debounce
        self._max_debounce = max_debounce
        # a policy always has a version, also an empty one, so a sidecar can be SYNCED to "nothing"
        self.version = start_version if start_version > 0 else max(clock.time_us(), 1)
        self._sidecars: dict[str, _Sidecar[P]] = {}
        self._sessions = 0
        self._nonces = 0
        self._first_change: float | None = None
        self._last_change = 0.0
        self.pushes_total = 0
        self.acks_total = 0
        self.nacks_total = 0
        self.ignored_answers_total = 0
        self.push_to_ack = Histogram()

    # ---------------------------------------------------------------- queries

    def next_deadline(self) -> float | None:
        if self._first_change is None:
            return None
        return min(self._last_change + self._debounce, self._first_change + self._max_debounce)

    @property
    def pending_change(self) -> bool:
        return self._first_change is not None

    def connected_count(self) -> int:
        return sum(1 for s in self._sidecars.values() if s.connected)

    def status(self, sidecar: str) -> SidecarStatus | None:
        sc = self._sidecars.get(sidecar)
        return None if sc is None else self._view(sc)

    def statuses(self) -> Iterator[SidecarStatus]:
        self._prune()
        for sc in self._sidecars.values():
            yield self._view(sc)

    def state_counts(self) -> dict[SyncState, int]:
        """Connected sidecars by state, without building a view of each (metrics are scraped often)."""
        counts = dict.fromkeys(SyncState, 0)
        for sc in self._sidecars.values():
            if sc.connected:
                counts[self._state(sc)] += 1
        return counts

    def payload(self, sidecar: str) -> P | None:
        sc = self._sidecars.get(sidecar)
        return None if sc is None else sc.payload

    # ---------------------------------------------------------------- events

    def change(self) -> int:
        """A policy change was accepted: a new version; compile and push once the burst settles."""
        now = self._clock.monotonic()
        if self._first_change is None:
            self._first_change = now
        self._last_change = now
        return self._next_version()

    def connect(self, sidecar: str, scope: Hashable, applied_version: int) -> tuple[int, list[Send[P]]]:
        """A stream said Hello: returns the stream's session and what to send it."""
        now = self._clock.monotonic()
        sc = self._sidecars.get(sidecar)
        if sc is None:
            sc = self._sidecars[sidecar] = _Sidecar(sidecar, scope)
        self._sessions += 1
        sc.session = self._sessions
        sc.connected = True
        sc.connected_at = now
        sc.disconnected_at = None
        sc.sent_at = None  # a push on an earlier stream is lost with it
        sc.sent_nonce = ""
        sc.last_nacked = False
        self._recompile(sc, scope)
        sc.sent_version = applied_version
        if applied_version:
            sc.acked_version = applied_version
        if applied_version > sc.desired_version:
            # it serves a version we never gave this payload (we restarted without memory): move above it
            self.version = max(self.version, applied_version)
            sc.desired_version = self._next_version()
        return sc.session, self._maybe_send(sc)

    def hello(self, sidecar: str, session: int, scope: Hashable) -> list[Send[P]]:
        """A Hello on an open stream: what the sidecar consumes or provides changed."""
        sc = self._current(sidecar, session)
        if sc is None:
            return []
        self._recompile(sc, scope)
        return self._maybe_send(sc)

    def answered(
        self, sidecar: str, session: int, version: int, nonce: str, accepted: bool, error: str = ""
    ) -> list[Send[P]]:
        """An ACK (accepted) or NACK arrived on a stream."""
        sc = self._current(sidecar, session)
        if sc is None or sc.sent_at is None or nonce != sc.sent_nonce or version != sc.sent_version:
            self.ignored_answers_total += 1
            return []
        self.push_to_ack.observe(max(self._clock.monotonic() - sc.sent_at, 0.0))
        sc.sent_at = None
        if accepted:
            sc.acked_version = version
            sc.last_nacked = False
            self.acks_total += 1
        else:
            sc.nacked_version = version
            sc.last_error = error
            sc.last_nacked = True
            self.nacks_total += 1
        return self._maybe_send(sc)

    def disconnected(self, sidecar: str, session: int) -> None:
        sc = self._current(sidecar, session)
        if sc is None:
            return
        sc.connected = False
        sc.disconnected_at = self._clock.monotonic()
        sc.sent_at = None
        sc.sent_nonce = ""

    def tick(self) -> list[Send[P]]:
        """Call at ``next_deadline()``: compile the settled burst for every connected sidecar and push."""
        deadline = self.next_deadline()
        if deadline is None or self._clock.monotonic() < deadline:
            return []
        return self.flush()

    def flush(self) -> list[Send[P]]:
        """Compile and push now (also before the debounce ends)."""
        self._first_change = None
        cache: dict[Hashable, P] = {}
        sends: list[Send[P]] = []
        # One nonce for the whole flush: a nonce must name one push among a sidecar's pushes, and sharing it
        # lets the control plane build one message for every sidecar of a scope instead of 20,000.
        nonce = self._next_nonce()
        for sc in self._sidecars.values():
            if not sc.connected:
                continue
            payload = cache.get(sc.scope)
            if payload is None:
                payload = cache[sc.scope] = self._render(sc.scope)
            if payload != sc.payload:
                sc.payload = payload
                sc.desired_version = self.version
                sends.extend(self._maybe_send(sc, nonce))
        self._prune()
        return sends

    # ---------------------------------------------------------------- internals

    def _next_version(self) -> int:
        self.version = max(self.version + 1, self._clock.time_us())
        return self.version

    def _current(self, sidecar: str, session: int) -> _Sidecar[P] | None:
        sc = self._sidecars.get(sidecar)
        if sc is None or sc.session != session or not sc.connected:
            return None
        return sc

    def _recompile(self, sc: _Sidecar[P], scope: Hashable) -> None:
        sc.scope = scope
        payload = self._render(scope)
        if sc.payload is not None and payload == sc.payload:
            return
        sc.payload = payload
        # the current version names the current policy; a payload that changed without a policy change
        # (a new scope) still needs a version the sidecar has not seen
        sc.desired_version = self.version if self.version > sc.desired_version else self._next_version()

    def _next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)

    def _maybe_send(self, sc: _Sidecar[P], nonce: str | None = None) -> list[Send[P]]:
        if not sc.connected or sc.sent_at is not None or sc.payload is None:
            return []
        if sc.desired_version <= sc.sent_version:
            return []
        sc.sent_nonce = nonce or self._next_nonce()
        sc.sent_version = sc.desired_version
        sc.sent_at = self._clock.monotonic()
        self.pushes_total += 1
        return [Send(sc.id, sc.session, sc.desired_version, sc.sent_nonce, sc.payload)]

    def _prune(self) -> None:
        now = self._clock.monotonic()
        gone = [
            k
            for k, s in self._sidecars.items()
            if s.disconnected_at is not None and now - s.disconnected_at > DISCONNECTED_RETENTION
        ]
        for k in gone:
            del self._sidecars[k]

    @staticmethod
    def _state(sc: _Sidecar[P]) -> SyncState:
        if sc.sent_at is not None:
            return SyncState.STALE
        if sc.last_nacked:
            return SyncState.NACKED
        if sc.desired_version and sc.acked_version == sc.desired_version:
            return SyncState.SYNCED
        return SyncState.NOT_SENT

    def _view(self, sc: _Sidecar[P]) -> SidecarStatus:
        return SidecarStatus(
            sidecar=sc.id,
            connected=sc.connected,
            connected_at=sc.connected_at,
            disconnected_at=sc.disconnected_at,
            desired_version=sc.desired_version,
            sent_version=sc.sent_version,
            acked_version=sc.acked_version,
            nacked_version=sc.nacked_version,
            last_error=sc.last_error,
            state=self._state(sc),
        )
