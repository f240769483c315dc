"""``ccc install codex`` / ``ccc uninstall codex``: the MCP server for OpenAI Codex CLI.

Codex reads MCP servers from ``config.toml``: the user's
``$CODEX_HOME/config.toml`` (``~/.codex`` by default) and, in a project it
trusts, ``<project>/.codex/config.toml`` (Codex's "Config basics" page). Each server is a table
``[mcp_servers.<name>]`` with ``command``, ``args``, ``env`` and ``env_vars``
(openai/codex docs/config.md, "mcp_servers"; codex-rs/core/src/config/types.rs,
``RawMcpServerConfig``, which refuses unknown keys). Codex starts a stdio server
with only a short list of its own variables (HOME, PATH, USER, ...; see
codex-rs/rmcp-client/src/utils.rs) plus the names in ``env_vars``: so the
relay's variables are named there, and their values never land in the file.
Codex has no hooks like Claude Code's: only the MCP server is installed.

The file is edited with tomlkit, which keeps the user's comments, order and
layout; the result is read back with tomllib and must say exactly what was
meant, or nothing is written.
"""

from __future__ import annotations

import os
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.items

from ccc_relay.integrations.install import (
    RELAY_ENV,
    SERVER_NAME,
    FileEdit,
    InstallError,
    command_words,
    created_by_install,
    kind,
    read_text,
)


def config_path(project: Path, *, user: bool, env: Mapping[str, str] | None = None) -> Path:
    if not user:
        return project / ".codex" / "config.toml"
    env = os.environ if env is None else env
    home = env.get("CODEX_HOME") or str(Path.home() / ".codex")
    return Path(home) / "config.toml"


def server_entry(command: str) -> dict[str, Any]:
    program, *args = command_words(command)
    return {"command": program, "args": [*args, "mcp"], "env_vars": list(RELAY_ENV)}


def snippet(command: str) -> str:
    """The table to add by hand when the file cannot be edited."""
    doc = tomlkit.document()
    _put(doc, server_entry(command))
    return "\n" + textwrap.indent(tomlkit.dumps(doc).strip(), "    ")


def install(project: Path, *, command: str = "ccc", user: bool = False) -> list[FileEdit]:
    """The edit that adds (or updates) the ``ccc-relay`` server. Raises InstallError."""
    path = config_path(project, user=user)
    return [_edit(path, command, remove=False)]


def uninstall(project: Path, *, user: bool = False) -> list[FileEdit]:
    """The edit that takes the ``ccc-relay`` server out. Raises InstallError."""
    path = config_path(project, user=user)
    return [_edit(path, "ccc", remove=True)]


def _edit(path: Path, command: str, *, remove: bool) -> FileEdit:
    old = read_text(path)
    if old is None and remove:
        return FileEdit(path, None, None, "not there")
    hint = f"add these lines by hand:{snippet(command)}"
    meant = _parse(path, old or "", hint)
    servers = meant.get("mcp_servers", {})
    if not isinstance(servers, dict):
        raise InstallError(
            path,
            f"'mcp_servers' is {kind(servers)}, not a table",
            f"nothing was written; make it a table, or {hint}",
        )
    current = servers.get(SERVER_NAME)
    if current is not None and not isinstance(current, dict):
        raise InstallError(
            path,
            f"'mcp_servers.{SERVER_NAME}' is {kind(current)}, not a table",
            f"nothing was written; remove it and run the command again, or {hint}",
        )
    if remove and current is None:
        return FileEdit(path, old, old, f"no MCP server '{SERVER_NAME}'")
    if not remove and current is not None and _owned(current) == server_entry(command):
        return FileEdit(path, old, old, f"MCP server '{SERVER_NAME}': {command} mcp")

    doc = tomlkit.parse(old or "")
    if remove:
        del servers[SERVER_NAME]
        if not servers:
            del meant["mcp_servers"]
        _remove(doc)
    else:
        entry = server_entry(command)
        servers[SERVER_NAME] = {**(current or {}), **entry}
        meant["mcp_servers"] = servers
        _put(doc, entry)
    new = _tidy(tomlkit.dumps(doc))
    if _parse(path, new, hint) != meant:  # tomlkit could not place it as meant
        raise InstallError(
            path, "cannot be edited without changing its meaning", f"nothing was written; {hint}"
        )
    if remove:
        if not new and created_by_install(path):
            return FileEdit(path, old, None, f"it held only the MCP server '{SERVER_NAME}'")
        return FileEdit(path, old, new, f"MCP server '{SERVER_NAME}' removed")
    return FileEdit(path, old, new, f"MCP server '{SERVER_NAME}': {command} mcp")


def _parse(path: Path, text: str, hint: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(
            path, f"is not valid TOML ({exc})", f"nothing was written; fix the file, or {hint}"
        ) from None


def _owned(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {key: entry.get(key) for key in ("command", "args", "env_vars")}


def _table(values: Mapping[str, Any]) -> tomlkit.items.Table:
    table = tomlkit.table()
    for key, value in values.items():
        table[key] = value
    return table


def _put(doc: tomlkit.TOMLDocument, entry: Mapping[str, Any]) -> None:
    servers = doc.get("mcp_servers")
    if servers is None:
        holder = tomlkit.table(is_super_table=True)
        holder.append(SERVER_NAME, _table(entry))
        doc.append("mcp_servers", holder)
        return
    current = servers.get(SERVER_NAME)
    if current is not None:
        for key, value in entry.items():
            current[key] = value  # in place: the user's other keys and comments stay
        return
    if isinstance(servers, tomlkit.items.InlineTable):
        inline = tomlkit.inline_table()
        inline.update(entry)
        servers[SERVER_NAME] = inline
        return
    table = _table(entry)
    table.add(tomlkit.nl())  # a blank line before whatever table follows
    servers[SERVER_NAME] = table


def _remove(doc: tomlkit.TOMLDocument) -> None:
    servers = doc["mcp_servers"]
    del servers[SERVER_NAME]
    if not servers:
        del doc["mcp_servers"]


def _tidy(text: str) -> str:
    """One newline at the end (tomlkit leaves the blank line it put before our table)."""
    return text.rstrip("\n") + "\n" if text.strip() else ""
