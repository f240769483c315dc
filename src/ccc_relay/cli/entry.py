"""The ``ccc`` command's entry point: Claude Code hooks take a short way in.

Claude Code runs ``ccc hook EVENT`` twice per turn and waits for it, so that
path loads only what a hook needs (the blocking client, the fence) and not the
command tree, click, rich, YAML or asyncio. Everything else goes to the full
CLI in :mod:`ccc_relay.cli.ccc`, run so that no traceback reaches the user
(:func:`ccc_relay.cli.common.run_main`). ``ccc-statusd`` starts here too.
"""

from __future__ import annotations

import sys

HOOK_EVENTS = ("session-start", "user-prompt-submit", "stop")


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "hook" and args[1] in HOOK_EVENTS:
        from ccc_relay.integrations.hooks import main as hook_main

        sys.exit(hook_main(args[1]))
    from ccc_relay.cli.ccc import main as full_main
    from ccc_relay.cli.common import run_main

    run_main(full_main)


def statusd_main() -> None:
    from ccc_relay.cli.common import run_main
    from ccc_relay.cli.statusd import main as statusd

    run_main(statusd)
