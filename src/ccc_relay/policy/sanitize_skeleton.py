"""A body's skeleton: the few characters the sanitiser's rules are keyed on, in order.

The skeleton of a text is its ASCII characters with all but the ASCII control
characters and the marks below deleted, and with marks that play the same part
in different token formats written as one character; one ``bytes.translate``
builds it. Deleting characters keeps the order of what is left, so a literal
that occurs in the text leaves its own skeleton in the text's: ``"sk-"`` leaves
``"k-"``, and so does ``"ghp_"``. A rule none of whose literals left theirs
cannot match, and a skeleton is a few dozen characters where the text is a
kilobyte, so looking there costs next to nothing.

A mark earns its place by making some literal's skeleton rare in ordinary
prose: the punctuation that starts paths and assignments, and a few letters
that token formats need next to it.
"""

from __future__ import annotations

_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])  # not \t or \n
# Each mark and how the skeleton writes it. Marks that play the same part in
# different token formats share a character, so one look serves them all.
_MARKS = {
    **dict.fromkeys("-_", "-"),  # "-----BEGIN", and the "-" or "_" in "sk-", "ghp_", "xoxb-"
    **dict.fromkeys("gkx", "k"),  # the letter before that "-" or "_"
    "A": "A",  # "AKIA", "ASIA", "ABIA", "ACCA"
    **dict.fromkeys("BCKS", "K"),  # and their second letters
    "J": "J",  # "eyJ"
    "1": "1",  # "ccc1."
    **{mark: mark for mark in "./:=~"},  # "..", assignments and paths
}
_TABLE = bytes.maketrans("".join(_MARKS).encode(), "".join(_MARKS.values()).encode())
_DROPPED = bytes(sorted(set(range(0x100)) - set(_CONTROL_BYTES) - set("".join(_MARKS).encode())))


def skeleton_of(text: str) -> str:
    """The ASCII control characters and marks of ``text``, in order."""
    # Leaving out non-ASCII characters joins their neighbours, which only
    # adds candidates: a literal still leaves its skeleton. The result is a
    # str because "in" on bytes first tries its operand as an int and pays
    # for the exception.
    return text.encode("ascii", "ignore").translate(_TABLE, _DROPPED).decode("ascii")


def has_control(skeleton: str) -> bool:
    """Whether a skeleton holds an ASCII control character other than ``\\t`` and ``\\n``."""
    return not skeleton.isprintable()  # every mark is printable
