"""Federating relays as production runs them: ``ccc-statusd start``, hardened.

``HardenedRelay`` is ``tests.relay_process.RelayProcess`` (the real daemon in its
own process, Landlock and seccomp applied) with a ``federation:`` section for
one host of a ``tests.nats_support`` server: its certificate, key, CA and NKEY
seed, the peers' relay keys and the policy lines. ``wait_for`` polls.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ccc_relay.daemon.signing import MessageSigner
from tests.nats_support import RelayIdentity
from tests.relay_process import RelayProcess

GENEROUS = "1000000 msg/min/session"


def federation_section(
    identity: RelayIdentity, servers: Sequence[str], peers: dict[str, str]
) -> dict[str, Any]:
    """The ``federation:`` section for ``identity``'s relay, as a config file holds it."""
    return {
        "host": identity.host,
        "servers": list(servers),
        "tls": {"ca": str(identity.ca), "cert": str(identity.cert), "key": str(identity.key)},
        "nkey_seed": str(identity.nkey_seed),
        "publish_timeout": "3s",
        "peers": {host: {"key": key} for host, key in peers.items()},
    }


class HardenedRelay(RelayProcess):
    """A federating relay started with ``ccc-statusd start`` (confined as in production)."""

    def __init__(self, state: Path, host: str) -> None:
        state.mkdir(mode=0o700)
        super().__init__(state)
        self.host = host
        self.key = MessageSigner.load_or_create(state).public_key_b64()

    def configure(
        self,
        identity: RelayIdentity,
        servers: Sequence[str],
        peers: dict[str, str],
        rules: Sequence[str],
    ) -> None:
        limits = {
            k: GENEROUS
            for k in ("rate_limit", "agent_rate_limit", "pair_rate_limit", "global_rate_limit")
        }
        config = {
            "daemon": {"state_dir": str(self.state), "security": limits},
            "federation": federation_section(identity, servers, peers),
            "policy": {"allow": list(rules)},
        }
        # JSON is YAML: the config file takes it as it is.
        self.config.write_text(json.dumps(config, indent=2) + "\n")

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.admin.request("status")
        return answer


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """The first true value ``predicate`` returns; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
