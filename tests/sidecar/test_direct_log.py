"""The access log's O_DIRECT writer (plexus.sidecar._direct_log, C): what it writes is exactly what it was
handed, whole lines, with the bulk of the bytes kept out of the page cache; it falls back to appending when
another process appends or logrotate truncates the file, and counts the lines a failed write loses.

Real files in the test's tmp dir (ext4 here; a file system without O_DIRECT skips the tests that need it).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from plexus.proxy.telemetry import OUTBOUND, RequestEntry, Telemetry
from plexus.sidecar import access_log
from plexus.sidecar.access_log import AccessLogWriter

DirectLog = access_log.DirectLog
pytestmark = pytest.mark.skipif(DirectLog is None, reason="plexus.sidecar._direct_log was not built")

PAGE = mmap.PAGESIZE


def _direct(path: Path, capacity: int = 4 << 20) -> object:
    try:
        return DirectLog(str(path), capacity)
    except OSError as exc:  # (a tmp dir on a file system without O_DIRECT)
        pytest.skip(f"no O_DIRECT in {path.parent}: {exc}")


def _lines(first: int, count: int, width: int = 0) -> bytes:
    pads = (b"x" * ((n * 7 + width) % 61) for n in range(first, first + count))
    return b"".join(b'{"n":%d,"pad":"%s"}\n' % (n, pad) for n, pad in enumerate(pads, first))


def _cached_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore over a mapping of it)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes.append(ctypes.c_long)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        pages = (size + PAGE - 1) // PAGE
        vector = ctypes.create_string_buffer(pages)
        try:
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
        return sum(byte & 1 for byte in vector.raw)
    finally:
        os.close(fd)


def test_what_is_written_is_what_was_handed_over_and_stays_out_of_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    expected = b'{"old":"a line from before, the file does not end on a block"}\n'
    path.write_bytes(expected)
    log = _direct(path)
    for batch in range(200):  # batches of every size, from one line to a sidecar's busy batch (~60 KiB)
        data = _lines(batch * 1000, 1 + (batch * 137) % 900, batch)
        assert log.write(data)
        expected += data
    log.drain()
    assert log.stats() == (0, 0, True)  # nothing lost, still direct
    pages = (len(expected) + PAGE - 1) // PAGE
    # Through the page cache every page would be cached; here only the two pages around each batch's whole
    # blocks can be. (Counted before the file is read back, which caches it all.)
    assert pages > 1000 and _cached_pages(path) <= 2 * 200 < pages // 2
    assert path.read_bytes() == expected
    log.close()
    assert not log.write(b"after close\n")
    log.drain()  # (a closed writer: nothing to wait for)


def test_another_appender_or_a_truncation_turns_it_into_an_appender(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = _direct(path)
    expected = _lines(0, 500)
    assert log.write(expected)
    log.drain()
    with path.open("ab") as other:  # another process appends (as a second sidecar on the same file would)
        other.write(b'{"from":"someone else"}\n')
    expected += b'{"from":"someone else"}\n'
    for n in range(50):
        data = _lines(1000 + n * 20, 20)
        assert log.write(data)
        expected += data
    log.drain()
    assert path.read_bytes() == expected and log.stats() == (0, 0, False)
    log.close()

    path.unlink()
    log = _direct(path)
    assert log.write(_lines(0, 300))
    log.drain()
    os.truncate(path, 0)  # logrotate's copytruncate
    expected = b""
    for n in range(30):
        data = _lines(5000 + n * 10, 10)
        assert log.write(data)
        expected += data
    log.close()
    assert path.read_bytes() == expected and log.stats()[:2] == (0, 0)


def test_a_batch_larger_than_its_buffer_is_refused(tmp_path: Path) -> None:
    log = _direct(tmp_path / "access.log", capacity=2 * PAGE)
    assert not log.write(b"x" * (2 * PAGE) + b"\n")
    assert log.write(b"fits\n")
    log.close()
    assert (tmp_path / "access.log").read_bytes() == b"fits\n"
    with pytest.raises(ValueError, match="capacity must be at least"):
        DirectLog(str(tmp_path / "b.log"), 100)


def test_a_failed_write_loses_its_lines_and_the_sidecar_counts_them(tmp_path: Path) -> None:
    """A file-size limit (RLIMIT_FSIZE, in a child process) makes the kernel refuse the writes past it: the
    lines those writes held are counted as failed, the error is logged once, the rest are written."""
    script = textwrap.dedent(
        f"""
        import logging, resource
        from plexus.proxy.telemetry import OUTBOUND, RequestEntry, Telemetry
        from plexus.sidecar.access_log import AccessLogWriter
        logging.basicConfig(level=logging.ERROR)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        telemetry = Telemetry("shop-v1")
        writer = AccessLogWriter.open({str(tmp_path / "access.log")!r}, telemetry)
        assert writer.direct
        telemetry.access_log = []
        for batch in range(20):
            for n in range(40):
                entry = RequestEntry(OUTBOUND, "s", "http", "GET", f"/{{batch}}/{{n}}", 0.0, 1.0, 200)
                telemetry.observe(entry)
            writer.flush()
            writer.drain()  # (each batch its own write: those before the limit are written whole)
        writer.close()
        print(telemetry.access_log_written, telemetry.access_log_failed)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written, failed = map(int, done.stdout.split())
    assert written + failed == 800 and failed > 0 and written > 0
    assert done.stderr.count("write failed") == 1 and "File too large" in done.stderr
    lines = (tmp_path / "access.log").read_bytes().split(b"\n")
    assert len(lines) - 1 >= written  # (the file's last, cut line is not counted as written)


def test_the_access_log_writer_appends_again_when_a_file_is_shared(tmp_path: Path) -> None:
    """Two writers on one file (as two sidecars given the same path): each notices the other's lines and
    writes through the page cache from then on; every line of both is in the file, whole."""
    path = tmp_path / "access.log"
    telemetries = [Telemetry(f"w{i}") for i in range(2)]
    writers = [AccessLogWriter.open(str(path), t) for t in telemetries]
    if not all(w.direct for w in writers):
        pytest.skip(f"no O_DIRECT in {tmp_path}")
    for t in telemetries:
        t.access_log = []
    for batch in range(30):
        for i, (t, w) in enumerate(zip(telemetries, writers, strict=True)):
            for n in range(50):
                t.observe(RequestEntry(OUTBOUND, "s", "http", "GET", f"/{i}/{batch}/{n}", 0.0, 1.0, 200))
            w.flush()
            w.drain()
    assert not any(w.direct for w in writers)
    for w in writers:
        w.close()
    paths = sorted(line.split(b'"path":"')[1].split(b'"')[0] for line in path.read_bytes().splitlines())
    assert paths == sorted(f"/{i}/{b}/{n}".encode() for i in range(2) for b in range(30) for n in range(50))
    assert [t.access_log_written for t in telemetries] == [1500, 1500]


def test_a_fifo_is_written_as_before(tmp_path: Path) -> None:
    path = tmp_path / "access.fifo"
    os.mkfifo(path)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(path.read_bytes()), daemon=True)
    reader.start()
    telemetry = Telemetry("shop-v1")
    writer = AccessLogWriter.open(str(path), telemetry)
    assert not writer.direct  # (no O_DIRECT for a pipe: the loop writes it)
    telemetry.access_log = []
    telemetry.observe(RequestEntry(OUTBOUND, "s", "http", "GET", "/through-a-fifo", 0.0, 1.0, 200))
    assert writer.flush() == 1
    writer.close()
    reader.join(timeout=10)
    assert b'"path":"/through-a-fifo"' in received[0]
