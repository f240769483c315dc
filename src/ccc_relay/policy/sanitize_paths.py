"""Filesystem paths in message bodies: what :func:`rewrite_paths` escapes or redacts.

Absolute, ``~/`` and ``../`` paths are escaped to an inert, labelled form (or
redacted), as the specification asks; URLs, relative paths such as
``src/app.py``, fractions and slash commands are left alone.
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
HOME = re.compile(rf"~(?<![^{_BOUNDARY}]~)[\w.-]*/{_SEG}(?:/{_SEG})*/?")
TRAVERSAL = re.compile(
    rf"(?<![^{_BOUNDARY}])(?:(?:{_SEG}/)*\.\./(?:{_SEG}(?:/{_SEG})*/?)?"
    rf"|(?:{_SEG}/)+\.\.(?![{_SEG_CHARS}]))"
)
_CHAIN = re.compile(f"[/{_SEG_CHARS}]*")
# One-segment absolute paths are usually slash commands ("/compact"), except these.
_ROOT_DIRS = frozenset(
    "app bin boot data dev etc home lib lib64 media mnt opt private proc root run sbin snap "
    "srv sys tmp usr var work workspace Users Volumes".split()
)


def _path_replacer(mode: PathMode, counted: list[int]) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        matched = m[0]
        path = matched.rstrip(".")  # a full stop ends the sentence, not the path
        if path.endswith("/") and matched[len(path) :].startswith(".."):
            path += ".."  # "a/.." ends in a ".." segment, not in two full stops
        tail = matched[len(path) :]
        if m.re is ABSOLUTE and not path.startswith("//"):
            segments = path.strip("/").split("/")
            if len(segments) == 1 and not path.endswith("/") and segments[0] not in _ROOT_DIRS:
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
