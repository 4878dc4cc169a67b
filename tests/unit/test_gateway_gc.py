"""The collector's tuning for a serving process."""

from __future__ import annotations

import gc

from vgate_gateway.app import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_the_startup_heap_and_sizes_the_young_generation() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        # cyclic garbage made after the freeze is still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
