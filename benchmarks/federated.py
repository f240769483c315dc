"""The cross-relay system ``ccc-fed``: two relays federated through NATS JetStream.

Rule: the same measurement as every other row -- one sender, one receiver, the
same bodies and window -- but the sender is ``s0`` on relay h1 and writes to
``r0@h2``, an agent of relay h2; both relays are ``ccc-statusd start`` (every
check on, hardened, durable) with a ``federation:`` section, and between them is
one nats-server with JetStream (file storage) on 127.0.0.1. h1 answers a send
once JetStream has acked the publish (``forwarded``); h2 verifies, checks and
stores each envelope before it acks the stream and delivers to ``r0``. So a
row's latency is the whole path, two relays and the stream.

The relays authenticate to NATS with NKEY users (the relay requires one); the
link is plain TCP on loopback, not TLS, so that the benchmark needs no
certificate authority and compares like with like: the ``nats-js`` row beside
it is plain TCP too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.cases import SUBSCRIBE_WINDOW, Access, CccPipe, CccSink, ccc_client
from benchmarks.peers import (
    SYSTEMS,
    CccServer,
    Server,
    _nats_info,
    find_binary,
    free_loopback_port,
)

HOSTS = ("h1", "h2")


class FederatedRelay(CccServer):
    """One of the two relays: the benchmark's ccc config plus a ``federation:`` section."""

    def __init__(self, host: str, root: Path | None) -> None:
        super().__init__(SYSTEMS["ccc"], root=root)
        self.host = host
        self.federation: dict[str, Any] = {}

    def public_key(self) -> str:
        from ccc_relay.daemon.signing import MessageSigner

        self.state.mkdir(mode=0o700, exist_ok=True)
        return MessageSigner.load_or_create(self.state).public_key_b64()

    def config_text(self) -> str:
        return super().config_text() + "federation: " + json.dumps(self.federation) + "\n"


class FederatedPair(Server):
    """nats-server (JetStream) and relays h1 and h2; ``pid`` is h1's, the sender's relay."""

    def __init__(self, system: Any, *, root: Path | None = None) -> None:
        super().__init__(system, root=root)
        # Beside this directory, not in it: a Unix socket's path holds at most 107 bytes.
        self.relays = {host: FederatedRelay(host, root) for host in HOSTS}

    @property
    def pid(self) -> int:
        return self.relays["h1"].pid

    def start(self) -> None:
        import nkeys

        binary = find_binary("nats-server")
        assert binary is not None
        port = free_loopback_port()
        users, seeds = [], {}
        for host in HOSTS:
            seed = bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
            users.append({"nkey": nkeys.from_seed(bytearray(seed)).public_key.decode()})
            seeds[host] = self.dir / f"{host}.nk"
            seeds[host].write_bytes(seed + b"\n")
            seeds[host].chmod(0o600)
        conf = self.dir / "nats.conf"
        conf.write_text(json.dumps({
            "listen": f"127.0.0.1:{port}",
            "jetstream": {"store_dir": str(self.dir / "js")},
            "authorization": {"users": users},
        }))  # fmt: skip
        self._spawn([binary, "-c", str(conf)])
        self._wait(lambda: _nats_info(port), "nats-server")
        keys = {host: relay.public_key() for host, relay in self.relays.items()}
        for host, relay in self.relays.items():
            relay.federation = {
                "host": host,
                "servers": [f"nats://127.0.0.1:{port}"],
                "nkey_seed": str(seeds[host]),
                "peers": {h: {"key": k} for h, k in keys.items() if h != host},
            }
            relay.start()
        h1, h2 = self.relays["h1"], self.relays["h2"]
        assert h1.access is not None
        assert h2.access is not None
        self.access = Access("ccc-fed", h1.access.address, peer_address=h2.access.address)

    def add_agents(self, names: list[str], pairs: list[tuple[str, str]]) -> None:
        """Senders on h1, receivers on h2; each pair allowed on both relays."""
        senders = {s for s, _ in pairs}
        h1, h2 = self.relays["h1"], self.relays["h2"]
        h1.add_agents(sorted(senders), [(s, f"{r}@h2") for s, r in pairs])
        h2.add_agents(sorted(set(names) - senders), [])
        for sender, recipient in pairs:
            h2.admin().request("allow", sender=f"{sender}@h1", recipient=recipient)
        assert self.access is not None
        assert h1.access is not None
        assert h2.access is not None
        credentials = {**h1.access.credentials, **h2.access.credentials}
        self.access = Access(
            "ccc-fed", self.access.address, credentials, peer_address=self.access.peer_address
        )

    def stop(self) -> None:
        for relay in self.relays.values():
            relay.stop()  # each removes its own directory
        super().stop()


class FedPipe(CccPipe):
    """A sender on h1: every target is an agent of h2."""

    async def submit(self, to: str, body: str) -> None:
        self.futures.append(self.client.send_nowait(f"{to}@h2", body))


class FedSink(CccSink):
    """A receiver on h2."""

    async def open(self) -> None:
        access = Access("ccc", self.access.peer_address, self.access.credentials)
        self.client = await ccc_client(access, self.agent)
        await self.client.subscribe(window=SUBSCRIBE_WINDOW)
        self.tally.on_finish = lambda: self.client.messages.put_nowait(None)
