"""The access log (``--access-log PATH`` or ``-`` for stdout): one JSON line per request, Envoy's fields
(``plexus.proxy.access_line`` lists them and formats the lines).

Off the hot path: a finished request only lands in ``Telemetry.access_log`` (a list; see
``plexus.proxy.telemetry``), as its entry, or (HTTP/1.1) as the tuple of its way of ending and its numbers.
A timer on the sidecar's loop swaps that list for an empty one every ``FLUSH_INTERVAL``, or as soon as
``ACCESS_LOG_BATCH`` lines wait, formats the batch (``plexus.proxy.access_line.format_batch``) and writes it
at once (one ``write`` per batch; a file write of a batch is short enough for the loop). ``close`` writes
what is left. A write that fails (disk full, closed pipe) loses that batch, counted in
``Telemetry.access_log_failed`` and logged once; the next batch tries again.

A regular file is written with O_DIRECT by a thread of the C extension ``plexus.sidecar._direct_log`` when
it was built (and ``PLEXUS_NO_SPEEDUPS`` is not set): the batch is copied into its buffer and the loop goes
on; the thread writes every 512 KiB or 50 ms, so lines reach the file within 0.15 s, whole lines only.
Through the page cache the file cost the sidecar several times what its bytes take to copy (issue 5,
bench/RESULTS.md; the C file says why), and a log shipper reading these files reads them from the disk
instead. Lines the thread could not write are counted as failed on the next flush; a batch its 4 MiB buffer
has no room for is dropped and counted as ``queue_full``. Once another process appends to the file (or
logrotate's copytruncate empties it) the thread stops and this loop appends again, as before. Stdout, pipes,
and file systems without O_DIRECT are written as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import IO, Any, Final

import orjson

from plexus.core import speedups
from plexus.core.errors import PlexusError
from plexus.proxy.access_line import entry_line, format_batch
from plexus.proxy.telemetry import RequestEntry, Telemetry

log = logging.getLogger("plexus.sidecar.access_log")

DirectLog: Any = None  # plexus.sidecar._direct_log.DirectLog, when built and wanted
if speedups.WANTED:
    # (not built here: files are written through the page cache)
    with contextlib.suppress(ImportError):
        from plexus.sidecar._direct_log import DirectLog

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

    def __init__(
        self, telemetry: Telemetry, target: str, stream: IO[bytes], owned: bool, direct: Any = None
    ) -> None:
        self.telemetry = telemetry
        self.target = target
        self._stream = stream
        self._owned = owned  # a file we opened (closed by close); stdout is left open
        self._direct = direct  # a DirectLog writing the same file, or None: written through _stream
        self._direct_lost = 0  # its lost lines already counted
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    @classmethod
    def open(cls, target: str, telemetry: Telemetry, *, direct: bool = True) -> AccessLogWriter:
        """Open ``target`` for appending (``-``: stdout). Raises AccessLogError naming the flag and path.
        ``direct``: a regular file is written with O_DIRECT where it can be (the module says why)."""
        if target == STDOUT:
            return cls(telemetry, target, sys.stdout.buffer, owned=False)
        try:
            stream = open(target, "ab")  # noqa: SIM115 - held for the sidecar's life, closed by close
        except OSError as exc:
            raise AccessLogError(
                f"--access-log {target}: cannot open for writing: {exc.strerror or exc}"
            ) from None
        writer = None
        if direct and DirectLog is not None:
            try:
                writer = DirectLog(target)
            except OSError as exc:  # not a regular file, or no O_DIRECT here: through the page cache
                log.debug("access log %s: written through the page cache (%s)", target, exc)
        return cls(telemetry, target, stream, owned=True, direct=writer)

    @property
    def direct(self) -> bool:
        """The file is written with O_DIRECT (by the thread of plexus.sidecar._direct_log)."""
        return self._direct is not None and bool(self._direct.stats()[2])

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
        if self._direct is not None:
            return self._hand_over(data, lines)
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self._failed(lines, str(exc))
            return 0
        self._failing = False
        telemetry.access_log_written += lines
        return lines

    def _hand_over(self, data: bytes, lines: int) -> int:
        """The batch to the O_DIRECT thread; what it could not write since the last time, counted."""
        telemetry = self.telemetry
        queued = self._direct.write(data)
        if queued:
            telemetry.access_log_written += lines
        else:  # (its buffer is full: the disk is behind by megabytes)
            telemetry.access_log_dropped += lines
        self._check_direct()
        return lines if queued else 0

    def _check_direct(self) -> None:
        """Count the lines the thread lost; once it writes no more with O_DIRECT (another process appends
        to the file, logrotate emptied it, a write failed), write on this loop through the page cache
        again, as a plain appender does at less cost than the thread."""
        direct = self._direct
        lost, errno, still = direct.stats()
        if not still:
            self._direct = None
            direct.drain()  # (its last lines written first: the order in the file stays)
            lost, errno, _ = direct.stats()
            direct.close()
        if lost != self._direct_lost:
            # (counted as written when handed over: delivered is what reached the file)
            self.telemetry.access_log_written -= lost - self._direct_lost
            self._failed(lost - self._direct_lost, os.strerror(errno))
            self._direct_lost = lost
        else:
            self._failing = False

    def _failed(self, lines: int, why: str) -> None:
        self.telemetry.access_log_failed += lines
        if not self._failing:
            log.error("access log %s: write failed, lines are lost until it works: %s", self.target, why)
        self._failing = True

    def drain(self) -> None:
        """Wait until the file holds every line flushed so far (the O_DIRECT thread writes them within
        50 ms anyway; for ``close`` and tests)."""
        if self._direct is not None:
            self._direct.drain()
            self._check_direct()

    def close(self) -> None:
        """Stop the timer, write what is left, stop queueing, close the file."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        self.flush()
        self.telemetry.access_log = None
        self.telemetry.access_log_full = None
        self.drain()
        if self._direct is not None:
            self._direct.close()
        if self._owned:
            self._stream.close()
