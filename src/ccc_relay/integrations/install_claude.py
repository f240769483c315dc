"""``ccc install claude`` / ``ccc uninstall claude``: the MCP server and the hooks.

Claude Code reads project MCP servers from ``.mcp.json`` and hooks from
``.claude/settings.json`` (shared, committed) and ``.claude/settings.local.json``
(personal, not committed), and runs the hooks of *every* settings file: so ours
live in exactly one of the two, and installing into one removes them from the
other. Formats as documented in Claude Code's "Hooks reference" and "Settings"
pages: ``hooks.<Event>`` is a list of groups ``{"matcher"?, "hooks": [{"type":
"command", "command", "timeout"}]}``; SessionStart, UserPromptSubmit and Stop
need no matcher.

A hook entry is ours when its command is ``<ccc> hook <verb>`` for the event's
verb, where ``<ccc>`` is the ``ccc`` program (any path), mentions ccc-relay, or
is the ``--command`` given now. Ours are rewritten in place and duplicates
dropped; every other entry, group and key stays as it was.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Literal

from ccc_relay.integrations.install import (
    FileEdit,
    command_words,
    created_by_install,
    edit_json,
    expect_type,
    load_json_object,
    mcp_servers_edit,
    read_text,
)

HOOK_EVENTS = {
    "SessionStart": "session-start",
    "UserPromptSubmit": "user-prompt-submit",
    "Stop": "stop",
}
HOOK_TIMEOUT_SECONDS = 10
Scope = Literal["shared", "local"]
SETTINGS_FILES: dict[Scope, str] = {
    "shared": "settings.json",
    "local": "settings.local.json",
}


def mcp_entry(command: str) -> dict[str, Any]:
    """The ``.mcp.json`` server entry. CCC_SOCKET and CCC_CREDENTIAL reach it
    from Claude Code's environment (``ccc run`` sets them)."""
    program, *args = command_words(command)
    return {"type": "stdio", "command": program, "args": [*args, "mcp"]}


def hook_entry(command: str, verb: str) -> dict[str, Any]:
    return {
        "type": "command",
        "command": f"{command} hook {verb}",
        "timeout": HOOK_TIMEOUT_SECONDS,
    }


def is_our_hook(entry: object, verb: str, command: str) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("command"), str):
        return False
    text: str = entry["command"]
    if text == f"{command} hook {verb}":
        return True
    try:
        words = shlex.split(text)
    except ValueError:
        return False
    if len(words) < 3 or words[-2:] != ["hook", verb]:
        return False
    program = words[:-2]
    return os.path.basename(program[-1]) == "ccc" or any(
        "ccc_relay" in word or "ccc-relay" in word for word in program
    )


def install(project: Path, *, command: str = "ccc", scope: Scope = "shared") -> list[FileEdit]:
    """The edits that give ``project`` the MCP server and hooks. Raises InstallError."""
    other: Scope = "local" if scope == "shared" else "shared"
    return [
        _mcp_edit(project, command, remove=False),
        _settings_edit(project, SETTINGS_FILES[scope], command, remove=False),
        _settings_edit(project, SETTINGS_FILES[other], command, remove=True),
    ]


def uninstall(project: Path, *, command: str = "ccc") -> list[FileEdit]:
    """The edits that take out what install added. Raises InstallError."""
    return [
        _mcp_edit(project, command, remove=True),
        _settings_edit(project, SETTINGS_FILES["shared"], command, remove=True),
        _settings_edit(project, SETTINGS_FILES["local"], command, remove=True),
    ]


def _mcp_edit(project: Path, command: str, *, remove: bool) -> FileEdit:
    entry = mcp_entry(command)
    return mcp_servers_edit(project / ".mcp.json", entry, remove=remove, label=f"{command} mcp")


def _settings_edit(project: Path, name: str, command: str, *, remove: bool) -> FileEdit:
    path = project / ".claude" / name
    old = read_text(path)
    if old is None and remove:
        return FileEdit(path, None, None, "not there")
    data = load_json_object(path, old, f'"hooks": {_compact(_our_hooks(command))}')
    hooks = data.get("hooks", {})
    expect_type(path, "hooks", hooks, dict, "an object")
    found = 0
    for event, verb in HOOK_EVENTS.items():
        groups = hooks.get(event, [])
        expect_type(path, f"hooks.{event}", groups, list, "a list")
        placed = False
        kept_groups = []
        for n, group in enumerate(groups):
            where = f"hooks.{event}[{n}]"
            expect_type(path, where, group, dict, "an object")
            entries = group.get("hooks", [])
            expect_type(path, f"{where}.hooks", entries, list, "a list")
            kept: list[Any] = []
            for entry in entries:
                if not is_our_hook(entry, verb, command):
                    kept.append(entry)
                    continue
                found += 1
                if not remove and not placed:
                    entry.update(hook_entry(command, verb))  # in place, extra keys kept
                    kept.append(entry)
                    placed = True
            if len(kept) != len(entries):
                group["hooks"] = kept
            if kept or len(kept) == len(entries):
                kept_groups.append(group)  # only a group we emptied goes
        if not remove and not placed:
            kept_groups.append({"hooks": [hook_entry(command, verb)]})
        if kept_groups:
            hooks[event] = kept_groups
        elif groups:  # we emptied it
            del hooks[event]
    if hooks:
        data["hooks"] = hooks
    elif found:
        data.pop("hooks", None)
    events = ", ".join(HOOK_EVENTS)
    if remove:
        if not found:
            return FileEdit(path, old, old, "no ccc-relay hooks")
        if not data and created_by_install(path):
            return FileEdit(path, old, None, "it held only ccc-relay's hooks")
        return edit_json(path, old, data, f"hooks {events} removed")
    return edit_json(path, old, data, f"hooks {events}: {command} hook <event>")


def _our_hooks(command: str) -> dict[str, Any]:
    return {event: [{"hooks": [hook_entry(command, verb)]}] for event, verb in HOOK_EVENTS.items()}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))
