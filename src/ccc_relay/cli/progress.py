"""A spinner on stderr for what takes a while, and nothing when stderr is not a terminal.

Scripts, pipes and tests see clean output; a person at a terminal sees that
the command is working (verifying a big audit log, waiting for a message, a
relay stopping). ``CCC_NO_PROGRESS=1`` turns it off at a terminal too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def wanted() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CCC_NO_PROGRESS")


@contextmanager
def spinner(text: str) -> Iterator[Callable[[str], None]]:
    """Show ``text`` with a spinner while the block runs; yields a function that
    changes the text. The line is gone when the block ends."""
    if not wanted():
        yield lambda _text: None
        return
    from rich.console import Console

    # Never interpret markup: the text may hold names and paths.
    console = Console(stderr=True, markup=False, emoji=False, highlight=False)
    with console.status(text, spinner="dots") as status:
        yield lambda new: status.update(new)
