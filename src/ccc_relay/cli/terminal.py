"""Text from the relay made safe to print on a terminal.

Bodies, thread names and error texts come from other agents (or echo what a
peer sent). A terminal obeys control sequences (ESC, CSI, carriage returns,
backspaces) and bidi overrides reorder what a reader sees, so a message could
clear a line and print a forged header. Everything printed from the relay goes
through :func:`shown`: such characters become visible escapes (``\\x1b``,
``\\u202e``); nothing is dropped, so what was sent can still be read.
"""

from __future__ import annotations

import re

# C0 and C1 controls but tab and newline, DEL, and the invisible and bidi
# formatting characters a terminal or a reader may act on.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_UNSAFE_IN_A_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str, *, one_line: bool = False) -> str:
    """``text`` with every character a terminal could act on written as an escape;
    with ``one_line``, newlines and tabs too (for headers and error lines)."""
    pattern = _UNSAFE_IN_A_LINE if one_line else _UNSAFE
    return pattern.sub(_escape, text)
