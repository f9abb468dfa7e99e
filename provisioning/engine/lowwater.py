"""The events in hand, by sequence number: the lowest one still open, for the cookie's low-water mark."""
from __future__ import annotations

import math
from collections import deque


class OpenEvents:
    """Sequence numbers of the stream's events not yet handled to the end.

    One event can stand for several jobs (a present phase that finds several
    entries gone): it stays open until each of them is handled. Events come
    in order, so the lowest open one is found from the left, in constant
    time on average (``min`` over a set cost a scan of up to MAX_WAITING
    numbers for every event and every ended job).
    """

    def __init__(self) -> None:
        self._jobs: dict[int, int] = {}      # seq -> jobs still open for it
        self._order: deque[int] = deque()    # seqs as they came (closed ones dropped lazily)

    def add(self, seq: int) -> None:
        """One more job for event ``seq`` (no lower than any event added before)."""
        if self._order and seq < self._order[-1]:
            raise ValueError(f"event {seq} came after event {self._order[-1]}")
        if seq in self._jobs:
            self._jobs[seq] += 1
        else:
            self._jobs[seq] = 1
            self._order.append(seq)

    def done(self, seq: int) -> None:
        """One job of event ``seq`` handled (an event not open is ignored)."""
        left = self._jobs.get(seq)
        if left is None:
            return
        if left > 1:
            self._jobs[seq] = left - 1
        else:
            del self._jobs[seq]

    def lowest(self) -> float:
        """The lowest open event; infinity when none is."""
        while self._order and self._order[0] not in self._jobs:
            self._order.popleft()
        return self._order[0] if self._order else math.inf

    def clear(self) -> None:
        self._jobs.clear()
        self._order.clear()

    def __len__(self) -> int:
        return len(self._jobs)
