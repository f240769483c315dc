"""``ccc install claude``: give a Claude Code project the relay's MCP server and hooks.

It merges into ``.mcp.json`` (the MCP server entry) and
``.claude/settings.json`` (hook entries): it adds what is missing, leaves
everything else as it was, and running it twice changes nothing. A file that
is not valid JSON is never overwritten; the user is told instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SERVER_NAME = "ccc-relay"
HOOK_EVENTS = {
    "SessionStart": "session-start",
    "UserPromptSubmit": "user-prompt-submit",
    "Stop": "stop",
}
HOOK_TIMEOUT_SECONDS = 10


class InstallError(RuntimeError):
    pass


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InstallError(
            f"{path} is not valid JSON ({exc}); fix it or move it away first"
        ) from None
    if not isinstance(data, dict):
        raise InstallError(f"{path} does not hold a JSON object; refusing to change it")
    return data


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def install_claude(project: Path, *, command: str = "ccc") -> list[str]:
    """Merge the MCP server and hook entries into ``project``; return what changed.

    Raises InstallError when a file exists but cannot be merged safely.
    """
    changes: list[str] = []
    mcp_path = project / ".mcp.json"
    mcp = _load(mcp_path)
    servers = mcp.setdefault("mcpServers", {})
    if not isinstance(servers, dict):
        raise InstallError(f"{mcp_path}: 'mcpServers' is not an object; refusing to change it")
    if SERVER_NAME not in servers:
        # CCC_SOCKET and CCC_CREDENTIAL come from the container's environment (ccc run).
        servers[SERVER_NAME] = {"type": "stdio", "command": command, "args": ["mcp"]}
        _save(mcp_path, mcp)
        changes.append(f"{mcp_path}: added MCP server '{SERVER_NAME}'")

    settings_path = project / ".claude" / "settings.json"
    settings = _load(settings_path)
    hooks = settings.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise InstallError(f"{settings_path}: 'hooks' is not an object; refusing to change it")
    changed = False
    for event, verb in HOOK_EVENTS.items():
        entry_command = f"{command} hook {verb}"
        groups = hooks.setdefault(event, [])
        if not isinstance(groups, list):
            raise InstallError(
                f"{settings_path}: hooks.{event} is not a list; refusing to change it"
            )
        present = any(
            isinstance(h, dict) and h.get("command") == entry_command
            for g in groups
            if isinstance(g, dict)
            for h in g.get("hooks", [])
        )
        if not present:
            groups.append(
                {
                    "hooks": [
                        {
                            "type": "command",
                            "command": entry_command,
                            "timeout": HOOK_TIMEOUT_SECONDS,
                        }
                    ]
                }
            )
            changes.append(f"{settings_path}: added {event} hook '{entry_command}'")
            changed = True
    if changed:
        _save(settings_path, settings)
    return changes
