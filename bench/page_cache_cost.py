"""What a growing log file costs the process that writes it, per 4 KiB page: through the page cache into
pages the file never had, through the page cache into pages just freed (the file truncated first), and with
O_DIRECT from one reused buffer (plexus.sidecar._direct_log's way). Why the access log is written with
O_DIRECT (issue 5, bench/RESULTS.md).

    .venv/bin/python bench/page_cache_cost.py [--mib 256] [--rounds 3] [--dir DIR]

Each way appends MIB MiB in 64 KiB writes (512 KiB for O_DIRECT, the writer's gathering) to a file in DIR
(default: a temporary dir under /tmp) and is charged this process's system + user CPU time. The three ways
run in turn, ROUNDS times; medians are printed. Before each way, 1 GiB of anonymous memory is touched and
freed, so "new pages" meets memory as a long-running sidecar does after the machine has freed some.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

PAGE = 4096
WRITE = 64 * 1024
DIRECT_WRITE = 512 * 1024


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def _churn(mib: int) -> None:
    """Touch and free ``mib`` MiB of anonymous memory (the memory other work frees on a busy machine)."""
    memory = mmap.mmap(-1, mib << 20)
    for offset in range(0, mib << 20, PAGE):
        memory[offset] = 1
    memory.close()


def new_pages(path: Path, size: int) -> float:
    data = b"x" * (WRITE - 1) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    try:
        began = _cpu()
        for _ in range(size // WRITE):
            os.write(fd, data)
        return _cpu() - began
    finally:
        os.close(fd)


def reused_pages(path: Path, size: int) -> float:
    new_pages(path, size)  # (cached, then freed by the truncation: the next appends take those pages)
    return new_pages(path, size)


def direct(path: Path, size: int) -> float:
    buffer = mmap.mmap(-1, DIRECT_WRITE)  # (page-aligned, as O_DIRECT wants; used over and over)
    buffer[:] = b"x" * (DIRECT_WRITE - 1) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        began = _cpu()
        for at in range(0, size - size % DIRECT_WRITE, DIRECT_WRITE):
            os.pwrite(fd, buffer, at)
        return _cpu() - began
    finally:
        os.close(fd)
        buffer.close()


WAYS: dict[str, Callable[[Path, int], float]] = {
    "page cache, new pages": new_pages,
    "page cache, pages just freed": reused_pages,
    "O_DIRECT, one reused buffer": direct,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256, help="MiB appended per way and round (default 256)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; medians are printed (default 3)")
    p.add_argument("--dir", type=Path, help="where the file goes (default: a temporary dir under /tmp)")
    args = p.parse_args()
    size = args.mib << 20
    costs: dict[str, list[float]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory(prefix="page-cache-cost-", dir=args.dir) as work:
        path = Path(work) / "access.log"
        for _ in range(args.rounds):
            for name, way in WAYS.items():
                _churn(1024)
                costs[name].append(way(path, size) / (size / PAGE) * 1e6)
                path.unlink()
    print(f"{args.mib} MiB appended, {args.rounds} rounds: CPU µs per 4 KiB page (median; each round)")
    for name, values in costs.items():
        rounds = " ".join(f"{value:.2f}" for value in values)
        print(f"  {name:30s} {statistics.median(values):6.2f}   ({rounds})")


if __name__ == "__main__":
    main()
