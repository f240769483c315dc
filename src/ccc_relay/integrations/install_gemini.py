"""``ccc install gemini`` / ``ccc uninstall gemini``: the MCP server for Gemini CLI.

Gemini CLI reads MCP servers from the ``mcpServers`` object of
``settings.json``: ``<project>/.gemini/settings.json``, or the user's
``~/.gemini/settings.json``; a stdio server has ``command``, ``args``, ``env``
(google-gemini/gemini-cli docs/tools/mcp-server.md, "Configuration
Structure"). Gemini CLI starts stdio servers only in a folder it trusts, and
hides from them every inherited variable whose name looks secret (``*KEY*``,
``*CREDENTIAL*``, ...; packages/core/src/services/environmentSanitization.ts):
CCC_CREDENTIAL and CCC_RELAY_PUBKEY would never arrive. Variables named in
``env`` are passed, with ``$VAR`` expanded from Gemini's own environment (an
unset one becomes empty, which ccc reads as unset), so the entry names them
there and the file holds no value. Gemini CLI has no hooks like Claude Code's:
only the MCP server is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ccc_relay.integrations.install import (
    FileEdit,
    command_words,
    mcp_servers_edit,
)

# Only what Gemini would hide or what decides where the relay is: the rest of
# RELAY_ENV (CCC_CONFIG, the cache dirs) is passed through as it is.
GEMINI = "Gemini CLI"  # allows comments in settings.json; ccc edits plain JSON only
PASSED_ENV = ("CCC_SOCKET", "CCC_CREDENTIAL", "CCC_RELAY_PUBKEY")


def settings_path(project: Path, *, user: bool) -> Path:
    base = Path.home() if user else project
    return base / ".gemini" / "settings.json"


def server_entry(command: str) -> dict[str, Any]:
    program, *args = command_words(command)
    return {
        "command": program,
        "args": [*args, "mcp"],
        "env": {name: f"${name}" for name in PASSED_ENV},
    }


def install(project: Path, *, command: str = "ccc", user: bool = False) -> list[FileEdit]:
    """The edit that adds (or updates) the ``ccc-relay`` server. Raises InstallError."""
    path = settings_path(project, user=user)
    return [
        mcp_servers_edit(
            path,
            server_entry(command),
            remove=False,
            label=f"{command} mcp",
            comments_ok_for=GEMINI,
        )
    ]


def uninstall(project: Path, *, user: bool = False) -> list[FileEdit]:
    """The edit that takes the ``ccc-relay`` server out. Raises InstallError."""
    path = settings_path(project, user=user)
    return [
        mcp_servers_edit(path, server_entry("ccc"), remove=True, label="", comments_ok_for=GEMINI)
    ]
