"""Which models stay loaded: a memory budget, least recently used first out.

A model's resident cost is estimated, not measured per process: its ONNX file's size times
``RESIDENT_FACTOR``. onnxruntime holds the weights once more than the file (the graph, its
initializers after optimization, the arena's first blocks): a 10.8 MB recognizer measured
~2x its file here. An RSS delta read at load time would be noisier than this (other calls
allocate meanwhile, and freed memory is not returned to the system at once).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

RESIDENT_FACTOR = 2.0
MIN_COST = 1 << 20  # a tiny model still costs its session: count at least 1 MiB


def resident_cost(path: Path) -> int:
    """Estimated bytes a loaded session of the model at ``path`` keeps resident."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return max(MIN_COST, int(size * RESIDENT_FACTOR))


def machine_memory() -> int:
    """This machine's memory in bytes, or the cgroup's limit where one is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            total = min(total, int(raw))
    return total


class Residency:
    """Keys in least-recently-used order with their costs, kept under ``budget`` bytes."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget  # None: no limit
        self._cost: OrderedDict[str, int] = OrderedDict()

    @property
    def used(self) -> int:
        return sum(self._cost.values())

    def fits(self, cost: int) -> bool:
        """Whether a model of ``cost`` more would stay within the budget without evicting."""
        return self.budget is None or self.used + cost <= self.budget

    def held(self) -> list[str]:
        """The keys held, least recently used first."""
        return list(self._cost)

    def touch(self, key: str) -> None:
        if key in self._cost:
            self._cost.move_to_end(key)

    def admit(self, key: str, cost: int) -> list[str]:
        """Record ``key`` as loaded and most recently used; returns the keys to evict (least
        recently used first) so the rest fits. The newcomer itself is never evicted."""
        self._cost[key] = cost
        self._cost.move_to_end(key)
        evicted: list[str] = []
        while self.budget is not None and self.used > self.budget and len(self._cost) > 1:
            oldest = next(iter(self._cost))
            del self._cost[oldest]
            evicted.append(oldest)
        return evicted

    def drop(self, key: str) -> None:
        self._cost.pop(key, None)
