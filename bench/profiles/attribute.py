"""Attribute py-spy --native raw samples: system calls apart, the rest to the innermost Python function.

.venv/bin/python bench/profiles/attribute.py bench/profiles/before_plexus.txt.gz [N]
"""

from __future__ import annotations

import collections
import gzip
import sys

SYSCALLS = ("write (libc", "read (libc", "epoll_pwait (libc", "writev (libc", "recv", "send", "accept")


def main() -> None:
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    by: collections.Counter[str] = collections.Counter()
    total = 0
    with (gzip.open if sys.argv[1].endswith(".gz") else open)(sys.argv[1], "rt") as fh:
        lines: list[str] = fh.readlines()
    for line in lines:
        stack, _, n = line.rstrip().rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        if any(leaf.startswith(s) or (" " + s) in leaf for s in SYSCALLS) or "[vdso]" in leaf:
            by["[syscall] " + leaf.split(" (")[0]] += count
            continue
        py = [f for f in frames if ".py:" in f and "uvloop/__init__" not in f and "runners.py" not in f]
        if py:
            f = py[-1]
            name = f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].split(":")[0]
            by[name] += count
        else:
            by["[loop/native] " + leaf.split(" (")[0]] += count
    print(f"total samples {total}")
    sys_total = sum(c for k, c in by.items() if k.startswith("[syscall]"))
    print(f"syscalls {100 * sys_total / total:.1f}%  rest {100 * (total - sys_total) / total:.1f}%")
    for f, c in by.most_common(top):
        print(f"{100 * c / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
