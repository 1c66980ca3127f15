"""The reconnect loop every long-lived client of Plexus's own services shares (registry, control plane)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from plexus.clients.grpc_h2 import GrpcError
from plexus.clients.registry_state import jitter


async def keep_connected(
    session: Callable[[], Awaitable[bool]],
    *,
    stopping: Callable[[], bool],
    wake: asyncio.Event,
    reconnect_min: float,
    reconnect_max: float,
    what: str,
    log: logging.Logger,
) -> None:
    """Run ``session`` (one connection, until it ends) again and again until ``stopping()``.

    Between sessions wait an exponential backoff with jitter (so clients that lost the same server do not all
    come back in the same millisecond), reset to ``reconnect_min`` after a session the server answered (it
    returned True); setting ``wake`` cuts a wait short."""
    delay = reconnect_min
    while not stopping():
        try:
            if await session():
                delay = reconnect_min
        except (OSError, TimeoutError, GrpcError) as exc:
            log.debug("%s: cannot connect: %s", what, exc)
        except Exception:  # a bug here must not end the client for the process's whole life
            log.exception("%s: connection failed", what)
        if stopping():
            return
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), jitter(delay))
        delay = min(delay * 2, reconnect_max)
