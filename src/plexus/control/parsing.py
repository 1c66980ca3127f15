"""Parse resources that come from several files as one set, keeping each one's own file:line.

Checks that span resources (a route to a subset that a DestinationRule of another file defines, two
VirtualServices for one host) need the whole set, and ``parse_resources`` checks one text. So the control
plane parses the stored documents and the applied file together, as one text of ``---``-separated chunks, and
maps every line of that text back to its chunk: problems (and the ``source`` of every parsed resource) name
the file and line the user wrote.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from plexus.config.resources import PolicySet, parse_resources
from plexus.config.route_config import Problem, RouteConfigError

COMBINED: Final = "<plexus-control-combined>"  # the combined text's file name, never shown
_COMBINED_REF = re.compile(re.escape(COMBINED) + r":(\d+)")
_FIELDS: Final = ("virtual_services", "destination_rules", "rate_limits", "unit_routings", "traffic_shifts")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str  # one or more YAML documents
    file_name: str
    first_line: int = 1  # the line of the chunk's first line in its file


def source_of(source: str) -> tuple[str, int]:
    """``"file:line"`` → (file, line); a source without a line starts at line 1."""
    file_name, _, line = source.rpartition(":")
    if not file_name or not line.isdigit():
        return source or "<stored>", 1
    return file_name, int(line)


class _LineMap:
    def __init__(self, chunks: Sequence[Chunk]) -> None:
        parts: list[str] = []
        self._starts: list[int] = []
        self._chunks = list(chunks)
        line = 1
        for chunk in chunks:
            if parts:
                parts.append("---\n")
                line += 1
            body = chunk.text if chunk.text.endswith("\n") else chunk.text + "\n"
            self._starts.append(line)
            parts.append(body)
            line += body.count("\n")
        self.text = "".join(parts)

    def where(self, line: int) -> tuple[str, int]:
        i = bisect.bisect_right(self._starts, line) - 1
        if i < 0:
            return (self._chunks[0].file_name if self._chunks else COMBINED), line
        chunk = self._chunks[i]
        return chunk.file_name, chunk.first_line + line - self._starts[i]

    def fix(self, text: str) -> str:
        return _COMBINED_REF.sub(lambda m: "{}:{}".format(*self.where(int(m.group(1)))), text)


def parse_chunks(chunks: Sequence[Chunk]) -> PolicySet:
    """Every resource of every chunk as one validated set; raises RouteConfigError whose problems name the
    chunks' own files and lines."""
    if not chunks:
        return PolicySet()
    lines = _LineMap(chunks)
    try:
        policy = parse_resources(lines.text, COMBINED)
    except RouteConfigError as exc:
        problems = []
        for p in exc.problems:
            file_name, line = lines.where(p.line) if p.file == COMBINED else (p.file, p.line)
            problems.append(Problem(file_name, line, lines.fix(p.path), lines.fix(p.message)))
        raise RouteConfigError(problems) from None
    fixed: dict[str, Any] = {
        name: tuple(dataclasses.replace(r, source=lines.fix(r.source)) for r in getattr(policy, name))
        for name in _FIELDS
    }
    return dataclasses.replace(policy, file=None, **fixed)
