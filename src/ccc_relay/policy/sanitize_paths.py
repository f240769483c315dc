"""Filesystem paths in message bodies: what :func:`rewrite_paths` escapes or redacts.

A path is escaped to an inert, labelled form (or redacted), as the
specification asks, when it names the host's file system: an absolute path
whose first directory is a well-known file-system root (``/etc/passwd``,
``/home/u``, ``/tmp``; :data:`ROOT_DIRS`), any absolute path with a ``..``
segment, a ``file:`` URL's path, a ``~/`` or ``~user/`` path and a relative
path with a ``..`` segment. Everything else that merely has slashes stays as
written: API routes (``/v2/orders``, ``GET /api/users/{id}``), URLs, relative
paths such as ``src/app.py``, fractions, dates and slash commands.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

PathMode = Literal["escape", "redact", "off"]

_SEG = r"[\w.@%+~-]+"
_SEG_CHARS = "\\w.@%+~-"
# A path starts the text or follows whitespace or opening punctuation, never a
# letter or a slash: that keeps "1/2", "and/or", "https://x/y" and "src/app.py" out.
_BOUNDARY = "\\s(\\[{<\"'`=,;:|"
ABSOLUTE = re.compile(
    r"/(?:"
    rf"(?<=(?i:file:)/)/(?:localhost)?/{_SEG}"  # file:///etc/passwd
    rf"|(?<![^{_BOUNDARY}]/){_SEG}"
    rf")(?:/{_SEG})*/?"
)
# A user name starts with a letter or "_", so "~2/3" (about two thirds) is no path.
HOME = re.compile(rf"~(?<![^{_BOUNDARY}]~)(?:[^\W\d][\w.-]*)?/{_SEG}(?:/{_SEG})*/?")
TRAVERSAL = re.compile(
    rf"(?<![^{_BOUNDARY}])(?:(?:{_SEG}/)*\.\./(?:{_SEG}(?:/{_SEG})*/?)?"
    rf"|(?:{_SEG}/)+\.\.(?![{_SEG_CHARS}]))"
)
_CHAIN = re.compile(f"[/{_SEG_CHARS}]*")
# The first directories of host paths: the Linux file-system hierarchy, where
# projects live in containers (the sandbox's /workspace, /app, /data, /work),
# Nix, and macOS (its own capitalisation: "/users/42" is an API route). An
# absolute path starting anywhere else ("/v2/orders", "/api/users", "/compact")
# is an API route or a command, not a file to touch.
ROOT_DIRS = frozenset(
    "bin boot dev etc home lib lib32 lib64 libx32 media mnt opt proc root run sbin snap srv "
    "sys tmp usr var app data work workspace workspaces nix "
    "Applications Library System Users Volumes private".split()
)


def names_host_path(path: str) -> bool:
    """Whether an absolute ``path`` (it starts with ``/``) names the host's file system."""
    segments = path.split("/")
    for segment in segments:
        if segment not in ("", "."):  # "/./etc" and "//etc" are /etc
            return segment in ROOT_DIRS or ".." in segments
    return False  # "/" alone is a slash in prose ("yes / no")


def _path_replacer(mode: PathMode, counted: list[int]) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        matched = m[0]
        path = matched.rstrip(".")  # a full stop ends the sentence, not the path
        if path.endswith("/") and matched[len(path) :].startswith(".."):
            path += ".."  # "a/.." ends in a ".." segment, not in two full stops
        tail = matched[len(path) :]
        # A file: URL's path ("///etc/passwd") is a host path wherever it points.
        if m.re is ABSOLUTE and not path.startswith("//") and not names_host_path(path):
            return matched
        counted[0] += 1
        if mode == "redact":
            return "[path]" + tail
        # Every byte but "/" and NUL is legal in a file name, so the only way to
        # make a path inert is to take its separators away; percent-encoding
        # does that reversibly, in ASCII, in a form models and people can read.
        return "[path:" + path.replace("%", "%25").replace("/", "%2F") + "]" + tail

    return replace


def sub_traversals(text: str, replace: Callable[[re.Match[str]], str]) -> str:
    """``TRAVERSAL.sub(replace, text)``, driven by the ``..`` literals.

    The regex alone must be tried at every position; here each ``..`` is found
    with str.find, its chain of path characters is walked back to where a
    match could start, and the regex is tried there once. Every character is
    walked over at most twice, so hostile input stays linear.
    """
    pieces: list[str] = []
    last = floor = 0
    i = text.find("..")
    while i != -1:
        back = _CHAIN.match(text[floor:i][::-1])
        start = i - (back.end() if back else 0)
        m = TRAVERSAL.match(text, start)
        if m:
            pieces += (text[last:start], replace(m))
            last = floor = m.end()
        else:
            # No match can start inside this chain: it has no boundary in it.
            chain = _CHAIN.match(text, start)
            floor = max(i + 2, chain.end() if chain else 0)
        i = text.find("..", floor)
    return "".join((*pieces, text[last:])) if pieces else text


def rewrite_paths(text: str, mode: PathMode, skeleton: str | None) -> tuple[str, int]:
    """Escape or redact every path in ``text``; return the text and how many were.

    ``skeleton`` is ``text``'s skeleton if the caller has it: a ``..`` in the
    text leaves one there, and looking in a few dozen characters beats
    looking in the text.
    """
    counted = [0]
    replace = None
    if ABSOLUTE.search(text):
        replace = _path_replacer(mode, counted)
        text = ABSOLUTE.sub(replace, text)
    if "~" in text:
        replace = replace or _path_replacer(mode, counted)
        text = HOME.sub(replace, text)
    # A replacement brings no "." of its own, so the skeleton of the text as
    # it came in still says whether a ".." can be left.
    if ".." in (text if skeleton is None else skeleton):
        text = sub_traversals(text, replace or _path_replacer(mode, counted))
    return text, counted[0]
