"""Summarise py-spy raw (folded) output: self and inclusive samples per frame, top N.

.venv/bin/python bench/profiles/fold.py bench/profiles/before_plexus.txt.gz [N]
"""

from __future__ import annotations

import collections
import gzip
import sys


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as fh:
        lines: list[str] = fh.readlines()
    for line in lines:
        stack, _, n = line.rstrip().rpartition(" ")
        count = int(n)
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("<module>")]
        total += count
        if frames:
            self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    print(f"total samples {total}")
    print("-- self --")
    for f, c in self_c.most_common(top):
        print(f"{100 * c / total:5.1f}%  {f}")
    print("-- inclusive --")
    for f, c in incl.most_common(top):
        print(f"{100 * c / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
