"""Sandboxes for agents, and the firewall for the ones that may reach the internet.

Layering: ``spec`` is the frozen, checked sandbox spec every other module
takes; ``bwrap`` and ``engines`` (podman, docker) turn it into command lines
(pure); ``staging`` lays out the host files a sandbox mounts; ``sandbox``
assembles the whole command line and starts it; ``detect`` reads the host
(runtimes, ids, limits); ``firewall`` writes the nftables ruleset for the
egress bridge. The CLI in ``ccc_relay.cli.containers_cmd`` maps arguments
onto these.
"""

from __future__ import annotations

from ccc_relay.containers.bwrap import bwrap_command
from ccc_relay.containers.detect import HostError, choose_identity, detect_runtime
from ccc_relay.containers.engines import docker_command, podman_command
from ccc_relay.containers.firewall import FirewallError, host_addresses, nft_ruleset
from ccc_relay.containers.sandbox import launch_command, run_sandbox
from ccc_relay.containers.spec import (
    SANDBOX_CREDENTIAL,
    SANDBOX_SOCKET,
    SANDBOX_WORKSPACE,
    SandboxSpec,
    SandboxSpecError,
)
from ccc_relay.containers.staging import LaunchError, prepare_podman_rootfs

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
