"""One relay as its own process for the federation end-to-end tests.

``python -m tests.federation_relay CONFIG`` runs ``Daemon(config)`` in the
foreground, unhardened, for the tests that stage a crash: ``CCC_TEST_CRASH``
patches this process to SIGKILL itself at one point (the other runs in those
tests use the real, hardened ``ccc-statusd start``):

* ``after_publish``: the stream acked a publish; the outbox row is not deleted;
* ``before_ack``: arrivals are committed; the stream has not been acked.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from ccc_relay.daemon import federation
from ccc_relay.daemon.server import Daemon, run_fast
from ccc_relay.policy.config import load_config


def _die(*_args: Any, **_kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _crash_at(point: str) -> None:
    runner = federation.FederationRunner
    if point == "after_publish":
        runner._forwarded = _die  # type: ignore[method-assign]
    elif point == "before_ack":
        store = runner._store

        async def store_then_die(self: Any, op: Any, audit: Any) -> None:
            await store(self, op, audit)
            if op.messages:
                _die()

        runner._store = store_then_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown CCC_TEST_CRASH point {point!r}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_config(sys.argv[1])
    point = os.environ.get("CCC_TEST_CRASH")
    if point:
        _crash_at(point)
    run_fast(Daemon(config).run())


if __name__ == "__main__":
    main()
