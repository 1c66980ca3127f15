"""A subscription: the current instances of one service, and callbacks when they change.

The same object in both modes. In direct mode the registry client's thread feeds it pushed sets; in mesh mode
the client's poller feeds it what the sidecar knows. Callbacks run on that feeding thread, so keep them short.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from plexus.discovery.model import Instance, ServiceSet

log = logging.getLogger("plexus.sdk")

ChangeCallback = Callable[[ServiceSet], None]


class Subscription:
    def __init__(self, service: str, *, egress: str | None = None, protocol: str | None = None,
                 on_close: Callable[[Subscription], None] | None = None) -> None:
        self.service = service
        # Mesh mode: the sidecar's egress address for this service (what the app calls); None in direct mode.
        self.egress = egress
        self.protocol = protocol  # keep only the instances that speak it; None keeps all
        self._set: ServiceSet | None = None
        self._callbacks: list[ChangeCallback] = []
        self._cond = threading.Condition()
        self._on_close = on_close
        self._closed = False

    # reading
    @property
    def current(self) -> ServiceSet | None:
        """The last set seen, or None before the first one arrived."""
        return self._set

    @property
    def instances(self) -> tuple[Instance, ...]:
        current = self._set
        return current.instances if current is not None else ()

    @property
    def addresses(self) -> list[str]:
        """The addresses callers connect to (a meshed provider's sidecar ingress, or a direct app's own)."""
        return [instance.address for instance in self.instances]

    @property
    def version(self) -> int | None:
        current = self._set
        return current.version if current is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, timeout: float, predicate: Callable[[ServiceSet], bool] | None = None) -> bool:
        """Block until a set has arrived (and ``predicate`` holds for it); False on timeout."""
        def ready() -> bool:
            current = self._set
            return current is not None and (predicate is None or predicate(current))

        with self._cond:
            return self._cond.wait_for(ready, timeout)

    def wait_for_instances(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` instances are known; False on timeout."""
        return self.wait(timeout, lambda s: len(s.instances) >= count)

    # callbacks
    def on_change(self, callback: ChangeCallback, *, call_now: bool = True) -> ChangeCallback:
        """Call ``callback(service_set)`` on every change (and at once with the current set, if known)."""
        with self._cond:
            self._callbacks.append(callback)
            current = self._set
        if call_now and current is not None:
            _safe_call(callback, current)
        return callback

    def remove_callback(self, callback: ChangeCallback) -> None:
        with self._cond:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._callbacks.clear()
        if self._on_close is not None:
            self._on_close(self)

    # fed by the client
    def _update(self, new: ServiceSet) -> None:
        if self.protocol is not None:
            kept = tuple(i for i in new.instances if i.protocol == self.protocol)
            if len(kept) != len(new.instances):
                new = dataclasses.replace(new, instances=kept)
        with self._cond:
            old = self._set
            if old is not None:
                if new.version < old.version:
                    return  # versions only grow; an older set arrived late
                if new.version == old.version and new.instances == old.instances and new.state == old.state:
                    return
            self._set = new
            callbacks = list(self._callbacks)
            self._cond.notify_all()
        for callback in callbacks:
            _safe_call(callback, new)

    def __repr__(self) -> str:
        return f"Subscription({self.service!r}, version={self.version}, addresses={self.addresses})"


def _safe_call(callback: ChangeCallback, value: ServiceSet) -> None:
    try:
        callback(value)
    except Exception:  # an app's callback must not kill the thread that feeds every subscription
        log.exception("plexus.sdk: subscription callback %r failed", callback)
