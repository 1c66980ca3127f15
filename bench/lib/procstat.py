"""What the kernel knows about a process: CPU time spent, resident memory, and which CPUs it may run on.

CPU per request is taken from the process's own accounting (``utime + stime`` in ``/proc/PID/stat``, summed
over all its threads by the kernel), because requests per second alone also measures the load generator.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # utime/stime unit; 100 on Linux, so 10 ms resolution per sample
TASKSET = shutil.which("taskset")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far, all threads included."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces; fields after it are plain.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5), counted from field 3
    return (utime + stime) / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` such as ``VmRSS`` or ``VmHWM``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    return status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    return status_kib(pid, "VmHWM") * 1024


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Move every thread of a running process onto ``cpus`` (threads it starts later inherit the mask)."""
    mask = set(cpus)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), mask)


def pinned_argv(argv: Sequence[str], cpus: Iterable[int] | None) -> list[str]:
    """Prefix ``taskset -c`` so the process and every thread it starts run only on ``cpus``.

    taskset execs the command, so the PID we get back is the program's own.
    """
    if cpus is None or TASKSET is None:
        return list(argv)
    return [TASKSET, "-c", ",".join(str(c) for c in sorted(set(cpus))), *argv]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_busy_seconds(cpus: Iterable[int]) -> float:
    """Busy time (everything but idle and iowait) of the given CPUs, from /proc/stat.

    Compared with the CPU time of our own processes on those CPUs, it tells how much other work (other users
    of a shared machine) ran there during a measurement.
    """
    wanted = {f"cpu{c}" for c in cpus}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [int(v) for v in parts[1:]]
            idle = values[3] + values[4]  # idle, iowait
            total += sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
    return total / CLOCK_TICKS


def involuntary_switches(pid: int) -> int:
    """Times any thread of the process was preempted (``nonvoluntary_ctxt_switches``, summed over threads).

    A proxy that sleeps in epoll between requests switches voluntarily; preemptions mean something else wanted
    its CPU, which is the direct measure of a disturbed run.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total
