"""Federation's NATS side: the link to JetStream (``link``) and the names on it (``subjects``).

This package does network I/O and imports nothing from the relay's core, protocol,
store or policy; the daemon gives it a ``FederationConfig`` (any object with the
fields of ``LinkSettings``) and the core's decisions stay on the other side of
``FederationLink.run``'s ``deliver`` callback and ``FederationLink.publish``.
"""

from ccc_relay.federation.link import (
    FederationLink,
    InboundMessage,
    LinkDown,
    LinkSettings,
    PublishFailed,
)

__all__ = ["FederationLink", "InboundMessage", "LinkDown", "LinkSettings", "PublishFailed"]
