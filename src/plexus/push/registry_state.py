"""The registry's lease, debounce, warm-up and version logic as a sans-IO state machine.

Theory of operation
-------------------
The server feeds events in (a publisher was seen, published, was lost; a subscriber added or removed services)
and calls ``tick()`` whenever ``next_deadline()`` passes. Every call returns the ``Effects`` to perform:
pushes to subscribers, publishers whose instances the store must delete, versions the store must remember.
Time comes from a ``Clock`` (monotonic seconds for deadlines, wall microseconds for versions), so tests drive
it with a fake.

Sets. A publisher holds a whole set of instances (its last publish). A service's *effective* set is the union
of the sets of every publisher that holds instances of it; when several publishers publish the same address,
the most recent publish wins the instance's metadata, and the address stays while any publisher holds it.

Leases. A publisher's lease is its stream: when the stream is lost its instances stay for ``lease_grace``
seconds; if the same publisher id is seen again in time nothing changes at all (no flap). Otherwise they are
removed when the grace ends. Sessions are numbered so a late "lost" of an old stream cannot end a newer one.

Debounce and versions. A change marks its services dirty; ``debounce`` seconds after the first change the
effective set is compared with the last committed one and, if it differs, committed with a new version
``max(previous + 1, wall time in µs)`` and pushed to every subscriber of the service. Versions therefore only
grow, also across registry restarts (wall time moves on even when nothing was remembered).

Subscriptions. Adding a service pushes its committed set at once; then each committed change.

Warm-up: the rule that keeps a registry restart harmless
--------------------------------------------------------
For ``warmup`` seconds after start (longer than the lease grace, so every live publisher has reconnected by
then) the registry never pushes a set smaller than the one it could have had:

* Nothing restored (no data dir, or no snapshot in it): every push is held until warm-up ends. Subscribers
  keep serving the sets they already had; publishers come back meanwhile; at the end each subscriber gets the
  live set.
* Restored from a snapshot: each remembered publisher counts as a publisher whose stream was lost and whose
  grace ends with the warm-up. Sets are served at once; a set that still holds instances of remembered
  publishers that have not come back has state RESTORED, others LIVE. An empty set is not pushed as a
  subscription's first push during warm-up (the snapshot may lag by one debounce). When warm-up ends,
  remembered publishers that did not come back are dropped and the sets switch to LIVE.

So an empty set replaces a non-empty one only when publishers really withdrew their instances or lost their
lease (grace or warm-up over), never because the registry restarted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from plexus.discovery.model import Instance, ServiceSet, SetState

SubscriberId = int


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for deadlines; never goes back."""
        ...

    def time_us(self) -> int:
        """Wall-clock microseconds, for versions that keep growing across restarts."""
        ...


@dataclass(frozen=True, slots=True)
class Push:
    subscriber: SubscriberId
    update: ServiceSet


@dataclass(slots=True)
class Effects:
    """What the driver must do after an event: send pushes, delete expired publishers, remember versions."""

    pushes: list[Push] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)

    def extend(self, other: Effects) -> None:
        self.pushes.extend(other.pushes)
        self.expired.extend(other.expired)
        self.versions.update(other.versions)


@dataclass(frozen=True, slots=True)
class Restored:
    """What a store remembered: each publisher's last set and each service's last version."""

    publishers: Mapping[str, Sequence[Instance]]
    versions: Mapping[str, int]


@dataclass(slots=True)
class _Publisher:
    by_service: dict[str, tuple[Instance, ...]] = field(default_factory=dict)
    session: int = 0
    connected: bool = False
    expires_at: float | None = None
    restored: bool = False  # remembered from the snapshot and not seen since the restart
    seq: int = 0  # order of its last publish: the latest publish wins an address's metadata


@dataclass(slots=True)
class _Service:
    version: int = 0  # 0: never committed
    instances: tuple[Instance, ...] = ()
    state: SetState = SetState.LIVE
    flush_at: float | None = None
    publishers: set[str] = field(default_factory=set)
    sent: dict[SubscriberId, int] = field(default_factory=dict)  # subscriber -> last version pushed (0: none)


class RegistryState:
    def __init__(
        self,
        *,
        clock: Clock,
        lease_grace: float,
        debounce: float,
        warmup: float,
        restored: Restored | None = None,
    ) -> None:
        self._clock = clock
        self._grace = lease_grace
        self._debounce = debounce
        self._warm_until: float | None = clock.monotonic() + warmup if warmup > 0 else None
        self._restore_mode = restored is not None
        self._publishers: dict[str, _Publisher] = {}
        self._services: dict[str, _Service] = {}
        self._subscribers: dict[SubscriberId, set[str]] = {}
        # only what has a deadline, so a tick costs what changed, not what exists
        self._dirty: set[str] = set()
        self._expiring: set[str] = set()
        self._sessions = 0
        self._seq = 0
        self.pushes_total = 0
        if restored is not None:
            self._restore(restored)

    # ---------------------------------------------------------------- queries

    @property
    def warming(self) -> bool:
        return self._warm_until is not None

    def next_deadline(self) -> float | None:
        deadlines = [f for n in self._dirty if (f := self._services[n].flush_at) is not None]
        deadlines.extend(e for p in self._expiring if (e := self._publishers[p].expires_at) is not None)
        if self._warm_until is not None:
            deadlines.append(self._warm_until)
        return min(deadlines) if deadlines else None

    def service_set(self, name: str) -> ServiceSet | None:
        """The committed set of ``name`` (what subscribers are or will be pushed), or None when unknown."""
        svc = self._services.get(name)
        if svc is None or svc.version == 0:
            return None
        return ServiceSet(name, svc.version, svc.instances, svc.state)

    def service_sets(self) -> list[ServiceSet]:
        sets = (self.service_set(name) for name in sorted(self._services))
        return [s for s in sets if s is not None]

    def publisher_count(self) -> int:
        return sum(1 for p in self._publishers.values() if p.connected)

    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # ---------------------------------------------------------------- publishers

    def publisher_seen(self, publisher_id: str) -> int:
        """A stream for ``publisher_id`` opened; returns its session number for ``publisher_lost``."""
        self._sessions += 1
        pub = self._publishers.setdefault(publisher_id, _Publisher())
        pub.session = self._sessions
        pub.connected = True
        pub.expires_at = None
        self._expiring.discard(publisher_id)
        return pub.session

    def published(self, publisher_id: str, instances: Iterable[Instance]) -> None:
        """Replace the publisher's whole set (instances already validated)."""
        pub = self._publishers.setdefault(publisher_id, _Publisher(connected=True))
        new: dict[str, dict[str, Instance]] = {}
        for inst in instances:
            new.setdefault(inst.service, {})[inst.address] = inst  # a repeated address: the last one wins
        by_service = {svc: tuple(sorted(m.values(), key=_addr)) for svc, m in new.items()}
        self._seq += 1
        pub.seq = self._seq
        was_restored, pub.restored = pub.restored, False
        changed = {
            s for s in by_service.keys() | pub.by_service.keys() if by_service.get(s) != pub.by_service.get(s)
        }
        if was_restored:  # its sets may now count as LIVE even where they did not change
            changed |= by_service.keys() | pub.by_service.keys()
        for svc_name in pub.by_service.keys() - by_service.keys():
            self._services[svc_name].publishers.discard(publisher_id)
        for svc_name in by_service:
            self._service(svc_name).publishers.add(publisher_id)
        pub.by_service = by_service
        now = self._clock.monotonic()
        for svc_name in changed:
            self._mark_dirty(svc_name, now)

    def publisher_lost(self, publisher_id: str, session: int) -> None:
        """The stream of ``session`` ended; the instances stay for the lease grace."""
        pub = self._publishers.get(publisher_id)
        if pub is None or pub.session != session:
            return  # a newer stream of the same publisher took over
        pub.connected = False
        pub.expires_at = self._clock.monotonic() + self._grace
        self._expiring.add(publisher_id)

    # ---------------------------------------------------------------- subscribers

    def subscribe(self, subscriber: SubscriberId, services: Iterable[str]) -> Effects:
        watched = self._subscribers.setdefault(subscriber, set())
        effects = Effects()
        for name in services:
            if name in watched:
                continue
            watched.add(name)
            svc = self._service(name)
            svc.sent[subscriber] = 0
            if svc.version == 0:
                self._commit(name, svc, effects, deliver=False)
            self._deliver(name, svc, [subscriber], effects)
        return effects

    def unsubscribe(self, subscriber: SubscriberId, services: Iterable[str]) -> None:
        watched = self._subscribers.get(subscriber, set())
        for name in services:
            if name in watched:
                watched.discard(name)
                svc = self._services[name]
                svc.sent.pop(subscriber, None)
                self._maybe_forget(name)

    def subscriber_gone(self, subscriber: SubscriberId) -> None:
        self.unsubscribe(subscriber, list(self._subscribers.get(subscriber, ())))
        self._subscribers.pop(subscriber, None)

    # ---------------------------------------------------------------- time

    def tick(self) -> Effects:
        """Run everything whose deadline passed: warm-up end, lease expiries, debounced flushes."""
        now = self._clock.monotonic()
        effects = Effects()
        if self._warm_until is not None and now >= self._warm_until:
            self._warm_until = None
            for pid, pub in self._publishers.items():
                if pub.restored and not pub.connected:  # remembered, never came back: lease ends with warm-up
                    pub.expires_at = now
                    self._expiring.add(pid)
                pub.restored = False
            for name in self._services:
                self._mark_dirty(name, now, at=now)  # switch RESTORED to LIVE and release held pushes
        for pid in sorted(p for p in self._expiring if _due(self._publishers[p].expires_at, now)):
            self._expiring.discard(pid)
            pub = self._publishers.pop(pid)
            for name in pub.by_service:
                svc = self._services[name]
                svc.publishers.discard(pid)
                self._mark_dirty(name, now, at=now)  # the grace already delayed it; no debounce on top
            effects.expired.append(pid)
        for name in sorted(n for n in self._dirty if _due(self._services[n].flush_at, now)):
            svc = self._services[name]
            svc.flush_at = None
            self._dirty.discard(name)
            self._commit(name, svc, effects, deliver=True)
            self._maybe_forget(name)
        return effects

    # ---------------------------------------------------------------- internals

    def _restore(self, restored: Restored) -> None:
        for name, version in restored.versions.items():
            self._service(name).version = version
        for pid, instances in restored.publishers.items():
            self.published(pid, instances)
            pub = self._publishers[pid]
            pub.restored = True
            pub.connected = False
            if self._warm_until is None:  # no warm-up: nobody is waited for
                pub.expires_at = self._clock.monotonic()
                self._expiring.add(pid)
        for name, svc in self._services.items():  # commit the remembered sets under their remembered versions
            svc.flush_at = None
            self._dirty.discard(name)
            svc.instances, svc.state = self._effective(name, svc)
            if svc.version == 0 and svc.instances:
                svc.version = self._next_version(0)

    def _service(self, name: str) -> _Service:
        svc = self._services.get(name)
        if svc is None:
            svc = self._services[name] = _Service()
        return svc

    def _mark_dirty(self, name: str, now: float, at: float | None = None) -> None:
        svc = self._service(name)
        due = now + self._debounce if at is None else at
        if svc.flush_at is None or due < svc.flush_at:
            svc.flush_at = due
            self._dirty.add(name)

    def _effective(self, name: str, svc: _Service) -> tuple[tuple[Instance, ...], SetState]:
        chosen: dict[str, tuple[int, Instance]] = {}
        restored = False
        for pid in svc.publishers:
            pub = self._publishers[pid]
            insts = pub.by_service.get(name, ())
            if insts and pub.restored and self._warm_until is not None:
                restored = True
            for inst in insts:
                current = chosen.get(inst.address)
                if current is None or current[0] < pub.seq:
                    chosen[inst.address] = (pub.seq, inst)
        instances = tuple(inst for _, inst in sorted(chosen.values(), key=lambda c: _addr(c[1])))
        return instances, SetState.RESTORED if restored else SetState.LIVE

    def _next_version(self, previous: int) -> int:
        return max(previous + 1, self._clock.time_us())

    def _commit(self, name: str, svc: _Service, effects: Effects, *, deliver: bool) -> None:
        instances, state = self._effective(name, svc)
        if svc.version == 0 or instances != svc.instances or state != svc.state:
            svc.instances, svc.state = instances, state
            svc.version = self._next_version(svc.version)
            effects.versions[name] = svc.version
        if deliver:
            self._deliver(name, svc, list(svc.sent), effects)

    def _deliver(self, name: str, svc: _Service, subscribers: list[SubscriberId], effects: Effects) -> None:
        if self._warm_until is not None and not self._restore_mode:
            return  # nothing remembered: hold every push until the publishers had time to come back
        update = ServiceSet(name, svc.version, svc.instances, svc.state)
        for sub in subscribers:
            sent = svc.sent.get(sub, 0)
            if sent >= svc.version:
                continue
            if self._warm_until is not None and sent == 0 and not svc.instances:
                continue  # a first push of an empty set waits for the warm-up to end
            svc.sent[sub] = svc.version
            effects.pushes.append(Push(sub, update))
            self.pushes_total += 1

    def _maybe_forget(self, name: str) -> None:
        svc = self._services.get(name)
        if (
            svc is not None
            and not svc.sent
            and not svc.publishers
            and svc.flush_at is None
            and not svc.instances
        ):
            del self._services[name]


def _due(deadline: float | None, now: float) -> bool:
    return deadline is not None and deadline <= now


def _addr(instance: Instance) -> str:
    return instance.address
