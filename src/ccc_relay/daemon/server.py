"""Start-up and shut-down of the relay: the order of things is the security.

1. validate the config (done by the caller, before anything here runs);
2. create the state and log dirs private (0700), open the store and audit log;
3. bind the agents' socket (configured mode and group) and the admin socket
   (0600), refusing symlinks and live daemons at their paths;
4. drop privileges when started as root with ``daemon.user``;
5. serve until SIGTERM/SIGINT or an admin ``shutdown``; then stop listening,
   say bye to every connection, flush the committer, close the store.

Every task has a parent: the committer, the scheduler and the sweeper run in
one TaskGroup and are cancelled together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ccc_relay.audit.log import AuditLog
from ccc_relay.daemon.admin import AdminConnection
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.daemon.connection import AgentConnection
from ccc_relay.daemon.relay import Relay
from ccc_relay.daemon.sockets import bind_unix_socket, ensure_private_dir, remove_socket
from ccc_relay.policy.config import Config
from ccc_relay.protocol.frames import Goodbye
from ccc_relay.store import Store

log = logging.getLogger("ccc_relay.daemon")

T = TypeVar("T")

SWEEP_INTERVAL = 30.0  # how often expired sessions are looked for
SHUTDOWN_GRACE = 5.0  # seconds the committer gets to flush at shutdown


class Daemon:
    """A running relay; ``run()`` serves until ``stop()`` or a signal."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.relay: Relay | None = None

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, *, install_signals: bool = True) -> None:
        config = self.config
        ensure_private_dir(config.state_dir)
        ensure_private_dir(config.audit.log_path)
        store = Store(config.db_path)
        audit = AuditLog(config.audit.log_path)
        committer = Committer(store, audit)
        relay = Relay(config, store, committer, clock=self.clock)
        relay.load_sessions(store.live_sessions(self.clock()))
        self.relay = relay
        committer.on_failure = lambda reason: log.critical("acceptance stopped: %s", reason)

        agent_sock = bind_unix_socket(
            config.socket_path, mode=config.socket_mode, group=config.socket_group
        )
        try:
            admin_sock = bind_unix_socket(config.admin_socket_path, mode=0o600)
        except BaseException:
            remove_socket(config.socket_path, agent_sock)
            agent_sock.close()
            raise
        try:
            await self._serve(relay, committer, agent_sock, admin_sock, install_signals)
        finally:
            remove_socket(config.socket_path, agent_sock)
            remove_socket(config.admin_socket_path, admin_sock)
            agent_sock.close()
            admin_sock.close()
            committer.close()
            store.close()
            audit.close()
            with contextlib.suppress(FileNotFoundError):
                config.pid_path.unlink()

    async def _serve(
        self,
        relay: Relay,
        committer: Committer,
        agent_sock: socket.socket,
        admin_sock: socket.socket,
        install_signals: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        agent_server = await loop.create_unix_server(
            lambda: AgentConnection(relay), sock=agent_sock
        )
        admin_server = await loop.create_unix_server(
            lambda: AdminConnection(relay, self.stopping), sock=admin_sock
        )
        _write_pid(self.config.pid_path)
        async with asyncio.TaskGroup() as tasks:
            commit_task = tasks.create_task(committer.run(), name="committer")
            scheduler = tasks.create_task(relay.run_scheduler(), name="scheduler")
            sweeper = tasks.create_task(self._sweep(relay), name="sweeper")
            await committer.submit(Job(audit=[relay.record(
                "daemon_started", pid=os.getpid(), uid=os.getuid(),
                socket=str(self.config.socket_path),
                config=str(self.config.source) if self.config.source else None,
            )]))  # fmt: skip
            log.info("ccc-statusd listening on %s (admin %s)", self.config.socket_path,
                     self.config.admin_socket_path)  # fmt: skip
            self.ready.set()
            await self.stopping.wait()
            log.info("ccc-statusd stopping")
            agent_server.close()
            admin_server.close()
            for conns in list(relay.online.values()):
                for conn in list(conns):
                    conn.write(Goodbye(reason="relay shutting down"))
                    conn.close()
            scheduler.cancel()
            sweeper.cancel()
            with contextlib.suppress(Exception):
                final = committer.submit(Job(audit=[relay.record("daemon_stopped")]))
                if final is not None:
                    await asyncio.wait_for(final, SHUTDOWN_GRACE)
            commit_task.cancel()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _sweep(self, relay: Relay) -> None:
        interval = min(SWEEP_INTERVAL, relay.limits.session_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            relay.expire_sessions()
            now = relay.clock()
            relay.committer.submit(Job(run=lambda s: s.delete_expired_sessions(now)),
                                   want_result=False)  # fmt: skip


def _write_pid(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run_daemon(config: Config) -> None:
    """Run in the foreground until stopped. Raises what start-up raises."""
    run_fast(Daemon(config).run())
