"""Start-up and shut-down of the relay: the order of things is the security.

1. validate the config and refuse root without ``daemon.user`` (the caller,
   before anything here runs);
2. create the state and log dirs private (0700), owned by the account the
   daemon will run as; refuse them when anything in them is another user's,
   writable by others, or a symlink (someone could have planted a key);
3. take the agents' socket from systemd (socket activation) or bind it
   (configured mode and group), and bind the admin socket (0600), refusing
   symlinks and live daemons at their paths;
4. drop privileges when started as root with ``daemon.user`` -- before any
   thread exists, because the kernel applies no_new_privs and Landlock per
   thread;
5. open the store and the audit log as that user, then confine the process
   with Landlock to its state, log and runtime dirs, and check the
   confinement holds by trying to open a file outside it; load the seccomp
   filter (daemon/seccomp.py) and check that ``unshare(0)`` is refused;
6. serve until SIGTERM/SIGINT or an admin ``shutdown``; then stop listening,
   say bye to every connection, flush the committer, close the store.

Every task has a parent: the committer, the scheduler, the sweeper, the audit
upkeep and each admin connection's server run in one TaskGroup and are
cancelled together.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ccc_relay.audit.signing import load_or_create_signing_key
from ccc_relay.core.federation import Federation
from ccc_relay.core.relay import RelayCore
from ccc_relay.daemon.admin import AdminConnection
from ccc_relay.daemon.agent_sockets import AgentSockets
from ccc_relay.daemon.audit_lifecycle import close_audit as close_audit
from ccc_relay.daemon.audit_lifecycle import open_audit_log
from ccc_relay.daemon.audit_lifecycle import restore_audit_outbox as restore_audit_outbox
from ccc_relay.daemon.committer import Committer, Job
from ccc_relay.daemon.confinement import check_confinement, confine
from ccc_relay.daemon.connection import AgentConnection
from ccc_relay.daemon.housekeeping import WriteCheckpoint, audit_upkeep, sweep_sessions
from ccc_relay.daemon.operator import Operator
from ccc_relay.daemon.privileges import drop_privileges
from ccc_relay.daemon.seccomp import DaemonFilter, daemon_policy, refuse_io_uring
from ccc_relay.daemon.shell import RelayShell
from ccc_relay.daemon.signing import MessageSigner, PeerKeys
from ccc_relay.daemon.sockets import (
    bind_unix_socket,
    check_private_tree,
    ensure_private_dir,
    group_id,
    inherited_socket,
    private_roots,
    remove_socket,
)
from ccc_relay.policy.config import Config, ConfigError, load_config
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.store import Store, StoreFailure

if TYPE_CHECKING:
    from ccc_relay.daemon.federation import FederationRunner, LinkFactory

log = logging.getLogger("ccc_relay.daemon")

T = TypeVar("T")

SHUTDOWN_GRACE = 5.0  # seconds the committer gets to flush at shutdown


class Daemon:
    """A running relay; ``run()`` serves until ``stop()`` or a signal."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        harden: bool = False,
        federation_link: LinkFactory | None = None,
    ) -> None:
        """``harden`` drops privileges and confines the whole process; only for a
        process that is the daemon and nothing else (not for in-process tests).
        ``federation_link`` builds the link to other relays (default: NATS)."""
        self.config = config
        self.federation_link = federation_link
        self.federation: FederationRunner | None = None
        self.clock = clock
        self.harden = harden
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.relay: RelayShell | None = None
        self.sandbox: dict[str, Any] = {"landlock": "not applied (in-process relay)"}
        self._agent_sockets = AgentSockets(config)

    def stop(self) -> None:
        self.stopping.set()

    async def run(self, *, install_signals: bool = True) -> None:
        config = self.config
        owner = self._service_account()
        # Names are resolved now: once Landlock applies, /etc/group is out of reach,
        # and sockets of agents added later still need the group.
        socket_gid = group_id(config.socket_group) if config.socket_group else None
        self._agent_sockets = AgentSockets(config, gid=socket_gid)
        ensure_private_dir(config.state_dir, owner=owner)
        ensure_private_dir(config.audit.log_path, owner=owner)
        if config.per_agent_sockets:
            # 0711: containers' launchers may reach an agent's directory (and
            # socket) by its name; nobody but the relay may list or create entries.
            _make_searchable_parents(config.agent_sockets)
            ensure_private_dir(config.agent_sockets, 0o711, owner=owner)
        # Nothing in them may be another user's, writable by others or a link.
        for root in private_roots(*_private_dirs(config)):
            check_private_tree(root, os.geteuid() if owner is None else owner[0])
        inherited = inherited_socket(config.socket_path)
        agent_sock = inherited or bind_unix_socket(
            config.socket_path, mode=config.socket_mode, gid=socket_gid
        )
        try:
            admin_sock = bind_unix_socket(config.admin_socket_path, mode=0o600)
            if owner is not None:
                os.chown(config.admin_socket_path, owner[0], owner[1])
                if inherited is None:
                    os.chown(config.socket_path, owner[0], -1)
            if self.harden and config.user is not None:
                # As root: become the user for good. Already the user (systemd's
                # User=): only verify, set no_new_privs, refuse core dumps.
                drop_privileges(config.user, group=config.socket_group)
        except BaseException:
            if inherited is None:
                remove_socket(config.socket_path, agent_sock)
            agent_sock.close()
            raise
        store = Store(config.db_path)
        audit = open_audit_log(config)
        restore_audit_outbox(store, audit, self.clock())  # tamper alarms are written at now
        # Loaded (or created, owned by the relay's user) before the confinement.
        self.checkpoint_key = load_or_create_signing_key(config.state_dir)
        if self.harden:
            # Compiled now: Landlock hides libseccomp from the loader.
            syscalls = DaemonFilter(daemon_policy(federating=config.federation is not None))
            status, self.sandbox = confine(config)
            check_confinement(status, self.sandbox)
            self.sandbox.update(syscalls.enforce())
        committer = Committer(store, audit)
        self._audit = audit
        signer = MessageSigner.load_or_create(config.state_dir)
        now = self.clock()
        federation = None
        queued = store.queue_totals()
        if config.federation is not None:
            federation = Federation(
                config.federation, signer.sign_bytes, PeerKeys(config.federation.peers).verify
            )
            queued += store.outbox_totals()
        core = RelayCore(
            config,
            agents=store.agents(),
            db_rules=store.rules(),
            db_groups=store.group_members(),
            last_delivery=store.max_delivery(),
            sign=signer.sign,
            now=now,
            queued=queued,
            federation=federation,
        )
        core.admission.load_sessions(store.live_sessions(now), now)
        relay = RelayShell(core, committer, self.clock)
        self.relay = relay
        if federation is not None:
            # Imported only now: a relay that does not federate loads no NATS code.
            from ccc_relay.daemon.federation import FederationRunner, nats_link

            self.federation = FederationRunner(
                relay, committer, federation, self.federation_link or nats_link
            )
            relay.forward = self.federation.forward

        def store_failed(reason: str) -> None:
            log.critical("acceptance stopped: %s", reason)
            core.store_failed(reason)

        committer.on_failure = store_failed
        committer.on_recovery = core.store_recovered
        try:
            await self._serve(relay, committer, agent_sock, admin_sock, install_signals)
        finally:
            if inherited is None:  # systemd owns (and removes) a socket it passed
                remove_socket(config.socket_path, agent_sock)
            remove_socket(config.admin_socket_path, admin_sock)
            agent_sock.close()
            admin_sock.close()
            committer.close()
            close_audit(store, audit)
            store.close()
            with contextlib.suppress(FileNotFoundError, PermissionError):
                config.pid_path.unlink()

    def _service_account(self) -> tuple[int, int] | None:
        """(uid, gid) of ``daemon.user`` when this root process will drop to it."""
        if not self.harden or os.geteuid() != 0 or self.config.user is None:
            return None
        import pwd

        entry = pwd.getpwnam(self.config.user)
        return entry.pw_uid, entry.pw_gid

    async def _serve(
        self,
        relay: RelayShell,
        committer: Committer,
        agent_sock: socket.socket,
        admin_sock: socket.socket,
        install_signals: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._reload_quietly, relay)
        agent_server = await loop.create_unix_server(
            lambda: AgentConnection(relay), sock=agent_sock
        )
        if self.config.per_agent_sockets:
            for agent in sorted(relay.core.agents):
                await self._agent_sockets.open(relay, agent)
        _write_pid(self.config.pid_path)
        async with asyncio.TaskGroup() as tasks:

            def operator(uid: int) -> Operator:
                return Operator(
                    relay,
                    by_uid=uid,
                    shutdown=self.stopping,
                    sandbox=self.sandbox,
                    reload=lambda: self.reload(relay),
                    agent_added=(
                        (lambda name: self._agent_sockets.add(relay, name))
                        if self.config.per_agent_sockets
                        else None
                    ),
                    agent_removed=(
                        self._agent_sockets.remove if self.config.per_agent_sockets else None
                    ),
                    federation=self.federation,
                )

            admin_tasks: set[asyncio.Task[None]] = set()

            def spawn_admin(serve: Coroutine[Any, Any, None]) -> None:
                task = tasks.create_task(serve, name="admin connection")
                admin_tasks.add(task)
                task.add_done_callback(admin_tasks.discard)

            admin_server = await loop.create_unix_server(
                lambda: AdminConnection(operator, spawn_admin), sock=admin_sock
            )
            commit_task = tasks.create_task(committer.run(), name="committer")
            scheduler = tasks.create_task(relay.run_scheduler(), name="scheduler")
            sweeper = tasks.create_task(sweep_sessions(relay), name="sweeper")
            ticker = tasks.create_task(relay.run_ticks(), name="ticks")
            federating = (
                tasks.create_task(self.federation.run(), name="federation")
                if self.federation is not None
                else None
            )
            upkeep = tasks.create_task(
                audit_upkeep(
                    committer,
                    self._audit,
                    self.checkpoint_key,
                    self.config.audit.retention,
                    self.clock,
                ),
                name="audit upkeep",
            )
            await _submitted(
                committer,
                Job(
                    audit=[
                        relay.core.record(
                            self.clock(),
                            "daemon_started",
                            pid=os.getpid(),
                            uid=os.getuid(),
                            socket=str(self.config.socket_path),
                            config=str(self.config.source) if self.config.source else None,
                        )
                    ]
                ),
            )
            log.info(
                "ccc-statusd listening on %s (admin %s)",
                self.config.socket_path,
                self.config.admin_socket_path,
            )
            if not relay.core.agents:
                log.info(
                    "no agents yet: 'ccc agent add NAME' registers one, 'ccc allow A B' lets "
                    "A send to B (everything else is denied); see the README's quickstart"
                )
            self.ready.set()
            await self.stopping.wait()
            log.info("ccc-statusd stopping")
            agent_server.close()
            admin_server.close()
            for task in list(admin_tasks):
                task.cancel()
            for agent in list(self._agent_sockets.servers):
                self._agent_sockets.close(agent)
            relay.say_goodbye("relay shutting down")
            scheduler.cancel()
            sweeper.cancel()
            ticker.cancel()
            if federating is not None:
                federating.cancel()
            upkeep.cancel()
            try:
                stopped = relay.core.record(self.clock(), "daemon_stopped")
                committer.submit(Job(audit=[stopped]), want_result=False)
                # The last line of a run is a signed checkpoint over everything before it.
                final = committer.submit(
                    Job(op=WriteCheckpoint(self._audit, self.clock(), self.checkpoint_key))
                )
                if final is not None:
                    await asyncio.wait_for(final, SHUTDOWN_GRACE)
            except (StoreFailure, TimeoutError) as exc:
                log.error("the last checkpoint of this run was not written: %s", exc)
            commit_task.cancel()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def reload(self, relay: RelayShell) -> dict[str, Any]:
        """Re-read the config file (SIGHUP or ``ccc-statusd reload``); audited either way.

        Raises ProtocolError(INVALID) when there is no file or it does not validate;
        the running configuration is then left as it was.
        """
        source = self.config.source
        if source is None:
            raise ProtocolError(
                ErrorCode.INVALID, "the relay runs on embedded defaults: there is no file to reload"
            )
        try:
            source.open("rb").close()
        except PermissionError:
            reason = (
                f"the relay may no longer read {source}: it was replaced (an editor or sed -i "
                "saves by rename) in a directory the relay's confinement does not cover; keep "
                "the config in a directory of its own (e.g. /etc/ccc-statusd/) and restart "
                "the relay"
            )
            relay.audit("config_reload_failed", config=str(source), reason=reason)
            log.error("config reload failed, keeping the running config: %s", reason)
            raise ProtocolError(ErrorCode.INVALID, f"reload refused: {reason}") from None
        except OSError:
            pass  # load_config names what is wrong with it
        try:
            new = load_config(source)
        except ConfigError as exc:
            relay.audit("config_reload_failed", config=str(source), reason=str(exc))
            log.error("config reload failed, keeping the running config: %s", exc)
            raise ProtocolError(ErrorCode.INVALID, f"reload refused: {exc}") from None
        result = relay.core.reload(new)
        relay.audit("config_reloaded", config=str(source), **result)
        log.info("config reloaded from %s: %s", source, result)
        return result

    def _reload_quietly(self, relay: RelayShell) -> None:
        with contextlib.suppress(ProtocolError):  # already logged and audited
            self.reload(relay)


def _private_dirs(config: Config) -> list[Path]:
    dirs = [config.state_dir, config.audit.log_path]
    return [*dirs, config.agent_sockets] if config.per_agent_sockets else dirs


def _make_searchable_parents(path: Path) -> None:
    """Create the missing parents of ``path`` mode 0755 whatever the umask, so a
    sandbox uid can walk to the agent sockets (e.g. /run/ccc-status)."""
    missing = [p for p in path.parents if not p.exists()]
    for parent in reversed(missing):
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o755)
            os.chmod(parent, 0o755)  # noqa: S103 -- a path to walk, listing nothing of value


def _submitted(committer: Committer, job: Job[Any]) -> asyncio.Future[Any]:
    future = committer.submit(job)
    assert future is not None
    return future


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
    """Run in the foreground until stopped, hardened. Raises what start-up raises."""
    tune_garbage_collector()
    refuse_io_uring()  # before the loop exists: see daemon/seccomp.py
    run_fast(Daemon(config, harden=True).run())


# Python's default (700) runs a young collection every few hundred messages in
# flight and, about once a second of a flood, a full one that holds the event
# loop for 15 ms; the relay's objects die by reference count, not in cycles.
YOUNG_GENERATION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Collect cycles less often, and never re-scan what start-up loaded.

    Call once the modules are imported: ``gc.freeze`` moves every object that
    exists now out of the collector's sight for good.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)
