"""``ccc manpages``: man pages for ``ccc``, ``ccc-statusd`` and every subcommand,
written from the click definitions (the same text ``--help`` prints), so they
cannot drift from the commands.

One page per command in git's style: ``ccc(1)``, ``ccc-agent(1)``,
``ccc-agent-add(1)``, ``ccc-statusd-check-config(1)``.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterator
from pathlib import Path

import click

from ccc_relay import __version__
from ccc_relay.cli.common import EXIT_CODES, EXIT_CONFIG, fail


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def _paragraphs(help_text: str) -> list[str]:
    """Help text as roff paragraphs; click's ``\\b`` blocks keep their lines."""
    out: list[str] = []
    for block in inspect.cleandoc(help_text).split("\n\n"):
        if block.startswith("\b"):
            out.append(".PP\n.nf\n" + _roff(block.removeprefix("\b").strip("\n")) + "\n.fi")
        else:
            out.append(".PP\n" + _roff(" ".join(block.split())))
    return out


def _walk(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, click.Context(sub, info_name=name, parent=ctx))


def page_name(ctx: click.Context) -> str:
    return ctx.command_path.replace(" ", "-")


def man_page(command: click.Command, ctx: click.Context, *, date: str) -> str:
    """One command's page: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS, EXIT STATUS."""
    name = page_name(ctx)
    lines = [
        f'.TH "{name.upper()}" "1" "{date}" "ccc-relay {__version__}" "ccc-relay manual"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(command.get_short_help_str(limit=200))}",
        ".SH SYNOPSIS",
        f".B {_roff(ctx.command_path)}",
        _roff(" ".join(command.collect_usage_pieces(ctx))),
    ]
    if command.help:
        lines += [".SH DESCRIPTION", *_paragraphs(command.help)]
    options = [
        p.get_help_record(ctx) for p in command.get_params(ctx) if isinstance(p, click.Option)
    ]
    records = [r for r in options if r is not None]
    if records:
        lines.append(".SH OPTIONS")
        for flags, text in records:
            lines += [".TP", f".B {_roff(flags)}", _roff(text)]
    if isinstance(command, click.Group):
        lines.append(".SH COMMANDS")
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is None or sub.hidden:
                continue
            lines += [
                ".TP",
                f".B {_roff(sub_name)}",
                f"{_roff(sub.get_short_help_str(limit=200))} See "
                f"\\fB{_roff(name)}\\-{_roff(sub_name)}\\fR(1).",
            ]
    lines.append(".SH EXIT STATUS")
    for code, label, meaning in EXIT_CODES:
        lines += [".TP", f".B {code}", f"{_roff(label)}: {_roff(meaning)}"]
    lines += [
        ".SH SEE ALSO",
        "\\fBccc\\fR(1), \\fBccc\\-statusd\\fR(1); docs/cli.md in the ccc\\-relay sources",
    ]
    return "\n".join(lines) + "\n"


def man_pages(command: click.Command, prog: str) -> dict[str, str]:
    """``{file name: roff text}`` for ``command`` (run as ``prog``) and all below it."""
    # SOURCE_DATE_EPOCH keeps the pages byte-identical between builds (reproducible builds).
    stamp = float(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(stamp))
    root = click.Context(command, info_name=prog)
    return {
        f"{page_name(ctx)}.1": man_page(cmd, ctx, date=date) for cmd, ctx in _walk(command, root)
    }


def default_output() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "man" / "man1"


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="Where to write the pages (default: $XDG_DATA_HOME/man/man1, which man(1) "
    "searches when ~/.local/bin is on PATH).",
)
def manpages(output: str | None) -> None:
    """Write man pages for ccc, ccc-statusd and every subcommand.

    \b
    ccc manpages                                     for this user
    sudo ccc manpages -o /usr/local/share/man/man1   for everyone
    man ccc-agent-add
    """
    from ccc_relay.cli.completion import root_command

    target = Path(output) if output else default_output()
    try:
        target.mkdir(parents=True, exist_ok=True)
        pages = {}
        for prog in ("ccc", "ccc-statusd"):
            pages.update(man_pages(root_command(prog), prog))
        for file_name, text in pages.items():
            (target / file_name).write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write the man pages to {target}: {exc.strerror or exc}", EXIT_CONFIG)
    click.echo(f"wrote {len(pages)} man pages to {target}")
