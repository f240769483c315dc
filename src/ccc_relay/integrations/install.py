"""What every ``ccc install`` / ``ccc uninstall`` shares: planning edits to an
agent's config files, then writing them, or not at all.

An agent module (``install_claude``, ``install_codex``, ``install_gemini``)
reads each file, works out its new text and returns :class:`FileEdit` values;
nothing is written until every file has been read and understood, so a
malformed file stops the whole command before anything changes. JSON is
written back in the style it was read (indent, separators, escaping, final
newline) with its key order kept, so a file that install changed and uninstall
changed back is the same bytes.

Whether a file or directory was *created* by install is kept in a small record
outside the project (``$XDG_STATE_HOME/ccc-relay/installed.json``): uninstall
deletes a file it emptied only when install created it, and a directory only
when install created it and it is empty. Without the record (another machine,
a deleted state dir) uninstall keeps the emptied file: the safe side.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

SERVER_NAME = "ccc-relay"
# The environment the MCP server reads (see client/endpoint.py, policy/config.py):
# an agent that does not pass its whole environment to MCP servers must be told.
RELAY_ENV = (
    "CCC_SOCKET",
    "CCC_CREDENTIAL",
    "CCC_RELAY_PUBKEY",
    "CCC_CONFIG",
    "CCC_CACHE_DIR",
    "XDG_CACHE_HOME",
)
Change = Literal["added", "updated", "unchanged", "removed"]


class InstallError(Exception):
    """A config file that cannot be changed safely: which file, what is wrong, what to do."""

    def __init__(self, path: Path, problem: str, next_step: str) -> None:
        super().__init__(f"{path}: {problem}; {next_step}")
        self.path = path
        self.problem = problem
        self.next_step = next_step

    def as_dict(self) -> dict[str, str]:
        return {
            "code": "bad_config_file",
            "file": str(self.path),
            "problem": self.problem,
            "next": self.next_step,
            "message": str(self),
        }


class FileEdit(NamedTuple):
    """One file's planned change: ``new`` is its new text, None to delete it."""

    path: Path
    old: str | None
    new: str | None
    detail: str

    @property
    def change(self) -> Change:
        if self.old == self.new:
            return "unchanged"
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "updated"

    def as_dict(self) -> dict[str, str]:
        return {"file": str(self.path), "change": self.change, "detail": self.detail}


def read_text(path: Path) -> str | None:
    """The file's text, or None when there is no file. Raises InstallError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise InstallError(
            path,
            "cannot be read or written: a file stands where its directory should be",
            "nothing was written; move that file away and run the command again",
        ) from None
    except OSError as exc:
        raise InstallError(
            path, f"cannot be read ({exc.strerror})", "check its permissions"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InstallError(
            path, "is not UTF-8 text", "save it as UTF-8 and run the command again"
        ) from None


def command_words(command: str) -> list[str]:
    """``--command`` as a program and its arguments, split as a shell would.

    Raises ValueError for an empty or unbalanced command line.
    """
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"{command!r} is not a command line ({exc})") from None
    if not words:
        raise ValueError("the command is empty")
    return words


# --- JSON, written back the way it was written --------------------------------------


class JsonStyle(NamedTuple):
    indent: str | None
    separators: tuple[str, str]
    ensure_ascii: bool
    final_newline: bool


DEFAULT_JSON_STYLE = JsonStyle("  ", (",", ": "), False, True)
_FIRST_INDENT = re.compile(r"[{\[][ \t]*\r?\n([ \t]+)\S")


def json_style(text: str) -> JsonStyle:
    """How ``text`` is laid out, as far as json.dumps can reproduce it."""
    match = _FIRST_INDENT.search(text)
    indent = match.group(1) if match else None
    if indent is None and "\n" in text.strip():
        indent = DEFAULT_JSON_STYLE.indent
    if indent is not None:
        separators = (",", ": ")
    else:
        separators = (
            ", " if re.search(r",\s", text) else ",",
            ": " if re.search(r":\s", text) else ":",
        )
    # Escape non-ASCII only when the file already did and holds none raw.
    ensure_ascii = "\\u" in text and text.isascii()
    return JsonStyle(indent, separators, ensure_ascii, text.endswith("\n"))


def dump_json(data: Any, style: JsonStyle = DEFAULT_JSON_STYLE) -> str:
    text = json.dumps(
        data,
        indent=style.indent,
        separators=style.separators,
        ensure_ascii=style.ensure_ascii,
    )
    return text + "\n" if style.final_newline else text


def _comment_at(text: str) -> tuple[int, int] | None:
    """(line, column) of the first ``//`` or ``/*`` comment outside a JSON string."""
    in_string = escaped = False
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "/" and text[i + 1 : i + 2] in ("/", "*"):
            line = text.count("\n", 0, i) + 1
            return line, i - (text.rfind("\n", 0, i) + 1) + 1
    return None


def load_json_object(
    path: Path, text: str | None, entry_hint: str, *, comments_ok_for: str | None = None
) -> dict[str, Any]:
    """Parse a JSON config file that must hold an object ({} when there is no file).

    ``entry_hint`` is what to add by hand when the file cannot be edited;
    ``comments_ok_for`` names the tool whose file may hold comments (Gemini CLI),
    which ccc cannot keep when it rewrites the file. Raises InstallError.
    """
    if text is None or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        comment = _comment_at(text)
        if comment is not None and comments_ok_for is not None:
            raise InstallError(
                path,
                f"has comments (line {comment[0]} column {comment[1]}), which {comments_ok_for} "
                "allows but ccc install cannot keep: it edits plain JSON only",
                f"nothing was written; add this by hand: {entry_hint}",
            ) from None
        where, why = (exc.lineno, exc.colno), exc.msg
        if comment is not None:
            where, why = comment, "comments are not JSON"
        raise InstallError(
            path,
            f"is not valid JSON (line {where[0]} column {where[1]}: {why})",
            f"nothing was written; fix the file (or add this by hand: {entry_hint})",
        ) from None
    if not isinstance(data, dict):
        raise InstallError(
            path,
            f"holds {kind(data)}, not an object",
            "nothing was written; make the file an object ({...}) first",
        )
    return data


def kind(value: Any) -> str:
    """What a parsed value is, in the words of a config file's reader."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, int | float):
        return "a number"
    return "empty (null)" if value is None else f"a {type(value).__name__}"


def expect_type(path: Path, where: str, value: Any, wanted: type, name: str) -> None:
    """Refuse to edit a file whose ``where`` is not of type ``wanted``. Raises InstallError."""
    if not isinstance(value, wanted):
        raise InstallError(
            path,
            f"'{where}' is {kind(value)}, not {name}",
            f"nothing was written; make '{where}' {name} (or remove it) and run the command again",
        )


def edit_json(path: Path, old: str | None, data: Mapping[str, Any], detail: str) -> FileEdit:
    """The edit that writes ``data`` to ``path`` in ``old``'s style; a file that
    already holds ``data`` keeps its bytes, whatever its style."""
    if old is not None and old.strip() and json.loads(old) == data:
        return FileEdit(path, old, old, detail)
    style = json_style(old) if old and old.strip() else DEFAULT_JSON_STYLE
    return FileEdit(path, old, dump_json(data, style), detail)


def mcp_servers_edit(
    path: Path,
    entry: Mapping[str, Any],
    *,
    remove: bool,
    label: str,
    comments_ok_for: str | None = None,
) -> FileEdit:
    """Add, update or remove our server in a JSON file's ``mcpServers`` object
    (Claude Code's ``.mcp.json``, Gemini CLI's ``settings.json``). Keys the user
    added to our entry (a timeout, say) stay. Raises InstallError."""
    old = read_text(path)
    if old is None and remove:
        return FileEdit(path, None, None, "not there")
    hint = json.dumps({"mcpServers": {SERVER_NAME: entry}}, separators=(", ", ": "))
    data = load_json_object(path, old, hint[1:-1], comments_ok_for=comments_ok_for)
    servers = data.get("mcpServers", {})
    expect_type(path, "mcpServers", servers, dict, "an object")
    current = servers.get(SERVER_NAME)
    if current is not None:
        expect_type(path, f"mcpServers.{SERVER_NAME}", current, dict, "an object")
    if remove:
        if current is None:
            return FileEdit(path, old, old, f"no MCP server '{SERVER_NAME}'")
        del servers[SERVER_NAME]
        if not servers:
            del data["mcpServers"]
        if not data and created_by_install(path):
            return FileEdit(path, old, None, f"it held only the MCP server '{SERVER_NAME}'")
        return edit_json(path, old, data, f"MCP server '{SERVER_NAME}' removed")
    if current is not None:
        current.update(entry)
    else:
        servers[SERVER_NAME] = dict(entry)
        data["mcpServers"] = servers
    return edit_json(path, old, data, f"MCP server '{SERVER_NAME}': {label}")


# --- applying a plan ------------------------------------------------------------------


def record_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ccc-relay" / "installed.json"


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _load_record(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        created = data.get("created", [])
        return {p for p in created if isinstance(p, str)}
    except (OSError, ValueError, AttributeError):
        return set()  # only a hint: without it uninstall keeps what it is unsure of


def _save_record(path: Path, created: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, json.dumps({"created": sorted(created)}, indent=2) + "\n", 0o600)


def created_by_install(path: Path) -> bool:
    """Did ``ccc install`` create this file or directory (as far as the record knows)?"""
    return _key(path) in _load_record(record_path())


def _write_atomically(path: Path, text: str, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            # Name the file being written, not the hidden temporary (or, for a
            # failed write or fsync, nothing at all).
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _make_parents(directory: Path, created: set[str]) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir()
        created.add(_key(new))


def check_writable(edits: Sequence[FileEdit]) -> None:
    """Refuse before writing anything when one of the edits could not be made.

    Raises InstallError naming the file.
    """
    for edit in edits:
        if edit.change == "unchanged":
            continue
        target = Path(os.path.realpath(edit.path))
        directory = target.parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        if not directory.is_dir():
            raise InstallError(
                edit.path,
                f"cannot be written: {directory} is not a directory",
                "nothing was written; move that file away and run the command again",
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise InstallError(
                edit.path,
                f"cannot be written: {directory} is not writable for this user",
                "nothing was written; run the command as the directory's owner",
            )


def apply(edits: Sequence[FileEdit]) -> None:
    """Write every edit that changes something (a symlinked file is written through).

    Raises InstallError when an edit cannot be made (checked before anything is
    written), OSError when writing fails all the same.
    """
    todo = [edit for edit in edits if edit.change != "unchanged"]
    if not todo:
        return
    check_writable(todo)
    where = record_path()
    created = _load_record(where)
    before = set(created)
    for edit in todo:
        target = Path(os.path.realpath(edit.path))
        if edit.new is None:
            target.unlink(missing_ok=True)
            created.discard(_key(target))
            _remove_created_dirs(target.parent, created)
            continue
        if edit.old is None:
            _make_parents(target.parent, created)
            created.add(_key(target))
            mode = 0o666 & ~_umask()
        else:
            mode = target.stat().st_mode & 0o7777
        _write_atomically(target, edit.new, mode)
    if created != before:
        # Only a hint for uninstall: the edits are made, and must not be reported as failed.
        with contextlib.suppress(OSError):
            _save_record(where, created)


def _remove_created_dirs(directory: Path, created: set[str]) -> None:
    while _key(directory) in created:
        try:
            directory.rmdir()
        except OSError:
            return  # not empty: someone else's files live there too
        created.discard(_key(directory))
        directory = directory.parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
