"""The NATS fixtures as a pytest plugin: ``pytest_plugins = ("tests.nats_fixtures",)``.

A separate module because pytest can only load a plugin it imports itself, and
test modules import ``tests.nats_support`` for its classes.
"""

from tests.nats_support import nats_cluster, nats_pki, nats_server

__all__ = ["nats_cluster", "nats_pki", "nats_server"]
