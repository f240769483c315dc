"""``ccc completion SHELL``: the shell completion script, from click's own machinery.

The script calls the command back with ``_CCC_COMPLETE`` (``_CCC_STATUSD_COMPLETE``
for ``ccc-statusd``) set, and click answers from the command definitions, so
completion never lags behind the commands.
"""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")
PROGRAMS = ("ccc", "ccc-statusd")


def complete_var(prog: str) -> str:
    """The environment variable click's completion protocol uses for ``prog``."""
    return "_" + prog.replace("-", "_").upper() + "_COMPLETE"


def root_command(prog: str) -> click.Command:
    """The top command ``prog`` runs: ``ccc``'s from the running command line (these
    commands are part of it), ``ccc-statusd``'s by import."""
    if prog == "ccc-statusd":
        from ccc_relay.cli.statusd import main as statusd

        return statusd
    return click.get_current_context().find_root().command


def completion_script(shell: str, prog: str) -> str:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - SHELLS are click's own
        raise click.BadParameter(f"no completion for {shell}", param_hint="SHELL")
    return cls(root_command(prog), {}, prog, complete_var(prog)).source()


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.option(
    "--command",
    "prog",
    type=click.Choice(PROGRAMS),
    default="ccc",
    show_default=True,
    help="Which command the script completes.",
)
def completion(shell: str, prog: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  ccc completion bash > ~/.local/share/bash-completion/completions/ccc
           ccc completion bash --command ccc-statusd \\
               > ~/.local/share/bash-completion/completions/ccc-statusd
    zsh:   ccc completion zsh > "${fpath[1]}/_ccc"
    fish:  ccc completion fish > ~/.config/fish/completions/ccc.fish
    Or, for this shell only: eval "$(ccc completion bash)"
    """
    click.echo(completion_script(shell, prog), nl=False)
