"""``ccc firewall``: arguments in, the nftables ruleset for the egress bridge out.

It prints the ruleset, or loads it with --apply; the ruleset itself is
written by ``ccc_relay.containers.firewall``. Registered with ``ccc`` through
``containers_cmd``, which re-exports it next to ``ccc run``.
"""

from __future__ import annotations

import os

import click

from ccc_relay.containers.firewall import (
    DEFAULT_BRIDGE,
    FirewallError,
    IPAddress,
    apply_ruleset,
    host_addresses,
    nft_ruleset,
    parse_address,
)


@click.command("firewall", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--print",
    "action",
    flag_value="print",
    default=True,
    help="Print the nftables ruleset (the default).",
)
@click.option(
    "--apply",
    "action",
    flag_value="apply",
    help="Load it with 'nft -f -' (root; replaces only table inet ccc_relay_egress).",
)
@click.option(
    "--bridge",
    default=DEFAULT_BRIDGE,
    show_default=True,
    help="The sandbox network's bridge interface.",
)
@click.option(
    "--host-address",
    "extra",
    multiple=True,
    metavar="ADDR",
    help="Another address of this host (e.g. a cloud VM's public one). Repeatable.",
)
@click.option(
    "--detect-host-addresses/--no-detect-host-addresses",
    default=True,
    show_default=True,
    help="Add the addresses this host's interfaces hold now.",
)
@click.option(
    "--allow-dns-to",
    "dns",
    multiple=True,
    metavar="ADDR",
    help="Let DNS (port 53) through to ADDR, e.g. podman's gateway. Repeatable.",
)
def firewall(
    action: str,
    bridge: str,
    extra: tuple[str, ...],
    detect_host_addresses: bool,
    dns: tuple[str, ...],
) -> None:
    """The nftables ruleset for sandboxes on the egress bridge (--network egress).

    \b
    Dropped from the bridge: RFC 1918, 100.64/10, 127/8, 169.254/16 and the
    other special IPv4 ranges, fc00::/7, fe80::/10, ::1, multicast and the
    other special IPv6 ranges, and every address of this host. Public egress
    passes.
    """
    try:
        addresses: list[IPAddress] = [parse_address(a) for a in extra]
        if detect_host_addresses:
            addresses += host_addresses()
        ruleset = nft_ruleset(
            bridge=bridge, host_addresses=addresses, allow_dns_to=[parse_address(a) for a in dns]
        )
        if action == "apply":
            if os.geteuid() != 0:
                raise click.ClickException("--apply needs root (it loads an nftables table)")
            apply_ruleset(ruleset)
            click.echo(f"loaded table inet ccc_relay_egress for bridge {bridge}", err=True)
        else:
            click.echo(ruleset, nl=False)
    except FirewallError as exc:
        raise click.ClickException(str(exc)) from None
