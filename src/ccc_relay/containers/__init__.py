"""Sandboxes for agents, and the firewall for the ones that may reach the internet.

Layering: ``sandbox`` builds command lines from a frozen spec (pure) and
starts them; ``detect`` reads the host (runtimes, ids, limits); ``firewall``
writes the nftables ruleset for the egress bridge. The CLI in
``ccc_relay.cli.containers_cmd`` maps arguments onto these.
"""

from __future__ import annotations

from ccc_relay.containers.detect import HostError, choose_identity, detect_runtime
from ccc_relay.containers.firewall import FirewallError, host_addresses, nft_ruleset
from ccc_relay.containers.sandbox import (
    SANDBOX_CREDENTIAL,
    SANDBOX_SOCKET,
    SANDBOX_WORKSPACE,
    LaunchError,
    SandboxSpec,
    SandboxSpecError,
    bwrap_command,
    docker_command,
    launch_command,
    podman_command,
    prepare_podman_rootfs,
    run_sandbox,
)

__all__ = [
    "SANDBOX_CREDENTIAL",
    "SANDBOX_SOCKET",
    "SANDBOX_WORKSPACE",
    "FirewallError",
    "HostError",
    "LaunchError",
    "SandboxSpec",
    "SandboxSpecError",
    "bwrap_command",
    "choose_identity",
    "detect_runtime",
    "docker_command",
    "host_addresses",
    "launch_command",
    "nft_ruleset",
    "podman_command",
    "prepare_podman_rootfs",
    "run_sandbox",
]
