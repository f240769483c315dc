"""Per-agent sockets (``per_agent_sockets``): one listener for each registered agent.

Each socket is alone in a directory of its own (``Config.agent_socket``), and a
sandbox mounts that directory rather than the socket file. The directory
outlives the relay's stops and crashes -- only removing the agent removes it --
so a running sandbox sees the socket bound there anew after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from ccc_relay.daemon.connection import AgentConnection
from ccc_relay.daemon.shell import RelayShell
from ccc_relay.daemon.sockets import (
    SocketPathError,
    bind_unix_socket,
    clear_stale_socket,
    ensure_agent_socket_dir,
    remove_agent_socket_dir,
    remove_socket,
)
from ccc_relay.policy.config import Config


class AgentSockets:
    """The listening per-agent sockets, by agent name.

    ``gid`` is ``daemon.socket_group`` already looked up: sockets of agents
    added later are made after Landlock, when /etc/group can no longer be read.
    """

    def __init__(self, config: Config, *, gid: int | None = None) -> None:
        self.config = config
        self.gid = gid
        self.servers: dict[str, tuple[asyncio.AbstractServer, socket.socket]] = {}

    async def open(self, shell: RelayShell, agent: str) -> None:
        """Listen on ``agent``'s own socket; connections there can only be ``agent``.

        Raises SocketPathError or OSError when the socket cannot be made.
        """
        config = self.config
        path = config.agent_socket(agent)
        if agent in self.servers:
            return
        ensure_agent_socket_dir(path.parent)
        # A socket of the older layout (AGENT_SOCKET_DIR/NAME.sock) left by a crash.
        with contextlib.suppress(SocketPathError, OSError):
            clear_stale_socket(config.agent_sockets / f"{agent}.sock")
        sock = bind_unix_socket(path, mode=config.socket_mode, gid=self.gid)
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: AgentConnection(shell, bound_agent=agent), sock=sock
        )
        self.servers[agent] = (server, sock)

    async def add(self, shell: RelayShell, agent: str) -> None:
        """``open`` for an agent being added: a directory made for it goes again when
        its socket cannot be made. Raises what ``open`` raises."""
        try:
            await self.open(shell, agent)
        except BaseException:
            remove_agent_socket_dir(self.config.agent_socket(agent).parent)
            raise

    def close(self, agent: str) -> None:
        """Stop listening on ``agent``'s socket and remove it; its directory stays for
        the next start, which sandboxes still running have mounted. Raises nothing."""
        entry = self.servers.pop(agent, None)
        if entry is None:
            return
        server, sock = entry
        server.close()
        remove_socket(self.config.agent_socket(agent), sock)
        sock.close()

    def remove(self, agent: str) -> None:
        """``agent`` is gone: close its socket and remove its directory. Raises nothing."""
        self.close(agent)
        remove_agent_socket_dir(self.config.agent_socket(agent).parent)
