"""The last output of each child, kept in memory for ``linx-otp logs``: a bounded ring of lines.

The writer adds each line it has written (with its time and stream); the control thread reads
the last N lines, or the lines after a sequence number (``logs -f`` asks again and again for
what came after the last line it saw). Each child's ring holds at most ``capacity`` bytes (its
lines' text and what holding them costs, about 57 bytes a line in CPython): the oldest lines go
first, and of a batch bigger than the whole ring only its newest lines are kept. This module does
no I/O and never blocks for long.

>>> ring = Rings(capacity=600)
>>> for text in ("one", "two", "three", "four"):
...     ring.add("a", "2026-01-01T00:00:00.000+00:00", "stdout", [text])
>>> [line["text"] for line in ring.read("a")["lines"]]  # "one" and "two" made room
['three', 'four']
>>> ring.read("a", after=3)["lines"][0]["seq"], ring.read("a", last=1)["next"]
(4, 4)
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

RING_BYTES = 1 << 20
"""Per child, by default: 1 MiB of recent output lines."""


ENTRY_OVERHEAD = 200
"""What one batch of lines costs beyond its lines (the objects holding it)."""
LINE_OVERHEAD = 57
"""What one line costs beyond its text: a short str object (49 bytes) and its place in a list.
Counted against the capacity so that many short lines cannot hold far more memory (and make far
bigger ``logs`` replies) than the capacity says."""


class _Ring:
    def __init__(self) -> None:
        self.batches: deque[tuple[int, str, str, list[str]]] = deque()
        """``(seq of the first line, time, stream, lines)``, oldest first: lines written together."""
        self.size = 0
        self.seq = 0
        """The sequence number of the newest line (0: none yet)."""


def _cost(lines: list[str]) -> int:
    return ENTRY_OVERHEAD + sum(len(line) + LINE_OVERHEAD for line in lines)


def _newest_that_fit(lines: list[str], capacity: int) -> list[str]:
    """The newest of ``lines`` whose cost is within ``capacity`` (at least one)."""
    room, kept = capacity - ENTRY_OVERHEAD, 0
    for line in reversed(lines):
        room -= len(line) + LINE_OVERHEAD
        if room < 0:
            break
        kept += 1
    return lines[len(lines) - max(kept, 1) :]


class Rings:
    """One ring per child id, shared by the writer (``add``) and the control thread (``read``)."""

    def __init__(self, capacity: int = RING_BYTES) -> None:
        self.capacity = capacity
        self.rings: dict[str, _Ring] = {}
        self.lock = threading.Lock()

    def add(self, child_id: str, time: str, stream: str, lines: list[str]) -> None:
        """Lines written together, at ``time``."""
        with self.lock:
            ring = self.rings.setdefault(child_id, _Ring())
            kept = _newest_that_fit(lines, self.capacity)
            ring.batches.append((ring.seq + 1 + len(lines) - len(kept), time, stream, kept))
            ring.seq += len(lines)
            lines = kept
            ring.size += _cost(lines)
            while ring.size > self.capacity and len(ring.batches) > 1:
                ring.size -= _cost(ring.batches.popleft()[3])

    def forget(self, child_id: str) -> None:
        """The child is gone from the tree: its lines are dropped (a new child of that id starts afresh)."""
        with self.lock:
            self.rings.pop(child_id, None)

    def read(self, child_id: str, last: int | None = None, after: int | None = None) -> dict[str, Any]:
        """The last ``last`` lines (all kept, if None), or those after sequence number ``after``:
        ``{"lines": [{"seq", "time", "stream", "text"}...], "next": seq of the newest line,
        "missed": lines that were after ``after`` but have left the ring}``."""
        with self.lock:
            ring = self.rings.get(child_id) or _Ring()
            batches = list(ring.batches)
            newest = ring.seq
        lines = [
            (first + index, time, stream, text)
            for first, time, stream, texts in batches
            for index, text in enumerate(texts)
            if after is None or first + index > after
        ]
        missed = 0
        if after is not None:
            oldest = batches[0][0] if batches else newest + 1
            missed = max(0, oldest - after - 1)
        if last is not None:
            lines = lines[-last:] if last else []
        keys = ("seq", "time", "stream", "text")
        return {"lines": [dict(zip(keys, line, strict=True)) for line in lines], "next": newest, "missed": missed}
