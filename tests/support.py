"""Shared test support: a real relay on real Unix sockets with a real SQLite file.

``relay_factory`` starts a ``Daemon`` on its own event loop in a thread (so
tests can use the blocking client), with an injectable clock; it stops it at
the end. ``run_cli`` runs the installed console commands as a user would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ccc_relay.client import AdminClient, Endpoint, RelayClient
from ccc_relay.credentials import Credential, write_credential_file
from ccc_relay.daemon.server import Daemon
from ccc_relay.policy.anomaly import AnomalyConfig
from ccc_relay.policy.config import AuditConfig, Config, Limits, Rule

BIN = Path(sys.executable).parent


class FakeClock:
    """Wall-clock time that tests move by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_config(
    state: Path,
    *,
    anomaly: AnomalyConfig | None = None,
    rules: tuple[Rule, ...] = (),
    **limits: Any,
) -> Config:
    return Config(
        state_dir=state,
        socket_path=state / "daemon.sock",
        admin_socket_path=state / "admin.sock",
        audit=AuditConfig(log_path=state / "audit"),
        limits=replace(Limits(), **limits),
        anomaly=anomaly or AnomalyConfig(),
        rules=rules,
    )


@dataclass
class RunningRelay:
    config: Config
    daemon: Daemon
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    clock: Callable[[], float]
    raw_sockets: list[Any] = field(default_factory=list)

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.config.admin_socket_path)

    def add_agent(self, name: str, **binding: int) -> Endpoint:
        credential = Credential.generate()
        path = self.config.state_dir / "credentials" / f"{name}.cred"
        write_credential_file(path, name, credential)
        self.admin.request("agent_add", name=name, cred_hash=credential.digest(), **binding)
        return Endpoint(self.config.socket_path, name, credential)

    def allow(self, sender: str, recipient: str, *, both: bool = False) -> None:
        self.admin.request("allow", sender=sender, recipient=recipient, both=both)

    def client(self, endpoint: Endpoint, **kwargs: Any) -> RelayClient:
        client = RelayClient(endpoint, timeout=10, **kwargs)
        client.connect()
        return client

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the relay's loop and return its result."""
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            box.append(fn())
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(10)
        return box[0]

    def stop(self) -> None:
        for sock in self.raw_sockets:
            sock.close()
        self.raw_sockets.clear()
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.daemon.stop)
            self.thread.join(15)
            assert not self.thread.is_alive(), "daemon did not stop"


def start_relay(config: Config, clock: Callable[[], float] = time.time) -> RunningRelay:
    loop = asyncio.new_event_loop()
    daemon_box: list[Daemon] = []
    failure: list[BaseException] = []
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)

        async def run() -> None:
            daemon = Daemon(config, clock=clock)
            daemon_box.append(daemon)
            task = asyncio.ensure_future(daemon.run(install_signals=False))
            ready = asyncio.ensure_future(daemon.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():  # it stopped before it was ready: report why, not "started"
                await task
            started.set()
            await task

        try:
            loop.run_until_complete(run())
        except BaseException as exc:
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="relay", daemon=True)
    thread.start()
    assert started.wait(15), "relay did not start"
    if failure:
        raise failure[0]
    return RunningRelay(config, daemon_box[0], loop, thread, clock)


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``ccc``/``ccc-statusd`` from the venv, as a user types them."""
    command = [str(BIN / args[0]), *args[1:]]
    return subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
