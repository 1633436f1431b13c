"""Round-robin timing shared by the bench scripts: every configuration once per repetition, so a change of
the machine's load spreads over all of them instead of biasing one."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)


def round_robin(calls: Mapping[K, Callable[[], object]], reps: int) -> dict[K, float]:
    """Median wall seconds of each call over ``reps`` round-robin repetitions, after one untimed warm-up call each."""
    for fn in calls.values():
        fn()
    times: dict[K, list[float]] = {k: [] for k in calls}
    for _ in range(reps):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
