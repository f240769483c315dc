"""The daemon's collector: start-up's objects frozen, young collections rarer."""

from __future__ import annotations

import gc

from ccc_relay.daemon.server import YOUNG_GENERATION_THRESHOLD, tune_garbage_collector


def test_tuning_freezes_what_exists_and_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_freeze_count() > 1000  # every module loaded so far
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, before[1], before[2])
        assert gc.isenabled()  # cycles are still freed, only less often
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
