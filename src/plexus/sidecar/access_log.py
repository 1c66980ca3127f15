"""The access log (``--access-log PATH`` or ``-`` for stdout): one JSON line per request, Envoy's fields
(``plexus.proxy.access_line`` lists them and formats the lines).

Off the hot path: a finished request only lands in ``Telemetry.access_log`` (a list; see
``plexus.proxy.telemetry``), as its entry, or (HTTP/1.1) as the tuple of its way of ending and its numbers.
A timer on the sidecar's loop swaps that list for an empty one every ``FLUSH_INTERVAL``, or as soon as
``ACCESS_LOG_BATCH`` lines wait, formats the batch (``plexus.proxy.access_line.format_batch``) and writes it
at once (one ``write`` per batch; a file write of a batch is short enough for the loop). ``close`` writes
what is left. A write that fails (disk full, closed pipe) loses that batch, counted in
``Telemetry.access_log_failed`` and logged once; the next batch tries again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import IO, Any, Final

import orjson

from plexus.core.errors import PlexusError
from plexus.proxy.access_line import entry_line, format_batch
from plexus.proxy.telemetry import RequestEntry, Telemetry

log = logging.getLogger("plexus.sidecar.access_log")

FLUSH_INTERVAL: Final = 0.1  # seconds: lines appear within this; a batch per tick keeps writes few
STDOUT: Final = "-"


class AccessLogError(PlexusError):
    """The access log cannot be opened: the message names ``--access-log`` and the path."""


def entry_record(entry: RequestEntry, telemetry: Telemetry) -> dict[str, Any]:
    """One request as the access-log object the writer writes for it."""
    record: dict[str, Any] = orjson.loads(entry_line(entry, telemetry))
    return record


class AccessLogWriter:
    """Drains ``Telemetry.access_log`` into a file or stdout on a timer; ``open``, ``start``, ``close``."""

    def __init__(self, telemetry: Telemetry, target: str, stream: IO[bytes], owned: bool) -> None:
        self.telemetry = telemetry
        self.target = target
        self._stream = stream
        self._owned = owned  # a file we opened (closed by close); stdout is left open
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    @classmethod
    def open(cls, target: str, telemetry: Telemetry) -> AccessLogWriter:
        """Open ``target`` for appending (``-``: stdout). Raises AccessLogError naming the flag and path."""
        if target == STDOUT:
            return cls(telemetry, target, sys.stdout.buffer, owned=False)
        try:
            stream = open(target, "ab")  # noqa: SIM115 - held for the sidecar's life, closed by close
        except OSError as exc:
            raise AccessLogError(
                f"--access-log {target}: cannot open for writing: {exc.strerror or exc}"
            ) from None
        return cls(telemetry, target, stream, owned=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Turn the queue on and flush it every FLUSH_INTERVAL on ``loop``."""
        self._loop = loop
        if self.telemetry.access_log is None:
            self.telemetry.access_log = []
        self.telemetry.access_log_full = self._full
        self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    def _full(self) -> None:
        """A batch is queued before the timer came: write it once the loop is done with what it runs now."""
        if self._loop is not None:
            self._loop.call_soon(self.flush)

    def _tick(self) -> None:
        self.flush()
        if self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self._tick)

    def flush(self) -> int:
        """Write what is queued now; returns the number of lines written."""
        telemetry = self.telemetry
        telemetry.settle()  # (the requests still in its journal: plexus.proxy.outcomes)
        batch = telemetry.access_log
        if not batch:
            return 0
        lines = len(batch)
        telemetry.access_log = []
        data = format_batch(telemetry, batch)
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            telemetry.access_log_failed += lines
            if not self._failing:
                log.error("access log %s: write failed, lines are lost until it works: %s", self.target, exc)
            self._failing = True
            return 0
        self._failing = False
        telemetry.access_log_written += lines
        return lines

    def close(self) -> None:
        """Stop the timer, write what is left, stop queueing, close the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self.flush()
        self.telemetry.access_log = None
        self.telemetry.access_log_full = None
        if self._owned:
            self._stream.close()
