"""Per-agent sockets (``per_agent_sockets``): one listener for each registered agent."""

from __future__ import annotations

import asyncio
import socket

from ccc_relay.daemon.connection import AgentConnection
from ccc_relay.daemon.shell import RelayShell
from ccc_relay.daemon.sockets import bind_unix_socket, remove_socket
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
        sock = bind_unix_socket(path, mode=config.socket_mode, gid=self.gid)
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: AgentConnection(shell, bound_agent=agent), sock=sock
        )
        self.servers[agent] = (server, sock)

    def close(self, agent: str) -> None:
        entry = self.servers.pop(agent, None)
        if entry is None:
            return
        server, sock = entry
        server.close()
        remove_socket(self.config.agent_socket(agent), sock)
        sock.close()
