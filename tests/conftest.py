"""Fixtures: a real relay on real Unix sockets with a real SQLite file (see support.py)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ccc_relay.policy.config import Config
from tests.support import BIN, FakeClock, RunningRelay, make_config, run_cli, start_relay


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    # Unix socket paths are limited to 108 bytes; pytest's tmp paths can be long.
    short = Path(f"/tmp/ccc-t-{os.getpid()}-{tmp_path.name[-24:]}")
    short.mkdir(mode=0o700)
    yield short
    subprocess.run(["rm", "-rf", str(short)], check=False)


@pytest.fixture
def relay_factory(state_dir: Path) -> Iterator[Callable[..., RunningRelay]]:
    running: list[RunningRelay] = []

    def factory(
        clock: Callable[[], float] = time.time, config: Config | None = None, **options: Any
    ) -> RunningRelay:
        relay = start_relay(config or make_config(state_dir, **options), clock)
        running.append(relay)
        return relay

    yield factory
    for relay in running:
        relay.stop()


@pytest.fixture
def relay(relay_factory: Callable[..., RunningRelay]) -> RunningRelay:
    return relay_factory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def daemon(state_dir: Path) -> Iterator[dict[str, str]]:
    """A real `ccc-statusd start` in state_dir; yields the environment the CLI needs to reach it."""
    env = {
        "CCC_CACHE_DIR": str(state_dir),
        "CCC_SOCKET": "",
        "CCC_CREDENTIAL": "",
        "CCC_CONFIG": "",
    }
    proc = subprocess.Popen(
        [str(BIN / "ccc-statusd"), "start", "--allow-root"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not (state_dir / "daemon.pid").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield env
    stopped = run_cli("ccc-statusd", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert proc.wait(10) == 0
    if proc.stderr:
        proc.stderr.close()
