"""Terminal control and invisible Unicode: what :func:`strip_unicode` removes.

* terminal control: C0/C1 control characters other than ``\\n`` and ``\\t``, and
  ANSI escape sequences (CSI, OSC including OSC 8 hyperlinks, DCS/APC/PM/SOS,
  lone ESC). Line endings ``\\r\\n``, ``\\r``, U+2028 and U+2029 become ``\\n``;
* invisible Unicode: bidi controls, zero-width and other format characters that
  render as nothing, stray variation selectors and Unicode tag characters (the
  "ASCII smuggling" block), and lone surrogates (not encodable as UTF-8).

Three kinds of invisible character stay, because removing them would break
ordinary text: U+200D (ZWJ) inside an emoji sequence, U+200C/U+200D between two
letters of a script that needs joiners (Arabic, Syriac, N'Ko, Mongolian, Indic),
and one U+FE0E/U+FE0F right after a visible character. Each carries at most a
bit or so per visible character, far below the many-per-character channel of
zero-width or tag encodings.
"""

from __future__ import annotations

import re

_ANSI = re.compile(
    r"\x1b(?:"
    r"\[[0-?]*[ -/]*[@-~]"  # CSI ... final byte
    r"|\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"  # OSC (titles, OSC 8 links) ... BEL or ST
    r"|[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)"  # DCS, SOS, PM, APC ... ST
    r"|[ -/]+[0-~]"  # nF escapes such as charset selection "ESC ( B"
    # Otherwise the ESC goes alone and the next character stays: an
    # unterminated CSI/OSC or ESC+letter leaves readable text, not a gap.
    r")?"
)
_LINE_BREAK = re.compile("[\r\u2028\u2029]")
_CONTROL_CHARS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
BIDI_CHARS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
TAG_CHARS = "\U000e0000-\U000e007f"
# Format characters (category Cf) that render as nothing, less bidi, tags and
# the joiners, plus invisible characters of other categories (fillers, the
# grapheme joiner, variation selectors other than text/emoji presentation).
# tests/test_sanitize.py checks every Cf of the running Unicode is covered here
# or listed there as visible.
_INVISIBLE_BMP = (
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u2060-\u2064\u206a-\u206f"
    "\u3164\ufe00-\ufe0d\ufeff\uffa0\ufff9-\ufffb"
)
_INVISIBLE_ASTRAL = (
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0100-\U000e01ef"
)
INVISIBLE_CHARS = _INVISIBLE_BMP + _INVISIBLE_ASTRAL
_JOINERS = "\u200c\u200d"
_PRESENTATION = "\ufe0e\ufe0f"
# Characters that take part in emoji ZWJ sequences (Extended_Pictographic and
# the skin-tone modifiers, approximated by block; Python has no such property).
PICTO = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2"
    "\u25aa-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
# Scripts whose spelling uses ZWJ/ZWNJ between letters (Persian, Hindi, ...).
JOINING_SCRIPT = "\u0600-\u07ff\u0800-\u08ff\u0900-\u0dff\u1800-\u18af\ufb50-\ufdff\ufe70-\ufefc"

# Which characters need work. The regex engine tests a character against a
# class of BMP ranges with one table lookup but walks astral ranges one by
# one, so the astral ones are found with two single-range searches that
# emoji (U+1F000 and up) never hit.
_UNICODE_WORK = re.compile(
    f"[{_CONTROL_CHARS}\r\u2028\u2029\ud800-\udfff{BIDI_CHARS}{_INVISIBLE_BMP}"
    f"{_JOINERS}{_PRESENTATION}]"
)
_ASTRAL_WORK = (re.compile("[\U000e0000-\U000e01ef]"), re.compile("[\U00013430-\U0001d17a]"))

_Pass = tuple[str, re.Pattern[str], str]  # (change kind, pattern, replacement)
_ASCII_PASSES: tuple[_Pass, ...] = (
    ("ansi", _ANSI, ""),
    ("newline", _LINE_BREAK, "\n"),  # after "\r\n" -> "\n", done with str.replace
    ("control", re.compile(f"[{_CONTROL_CHARS}]"), ""),
)
_STRIP_PASSES: tuple[_Pass, ...] = (
    *_ASCII_PASSES,
    # Lone surrogates cannot be encoded as UTF-8, so no store or wire could carry them.
    ("surrogate", re.compile("[\ud800-\udfff]"), ""),
    ("bidi", re.compile(f"[{BIDI_CHARS}]"), ""),
    ("tag", re.compile(f"[{TAG_CHARS}]"), ""),
    ("invisible", re.compile(f"[{INVISIBLE_CHARS}]"), ""),
)


_ContextPass = tuple[str, re.Pattern[str], dict[str, re.Pattern[str]]]  # chars, pass, per char


def _context_pass(chars: str, judge: str) -> _ContextPass:
    # The pass's own regex opens with a class of the characters it judges; one
    # regex per character opens with a literal, which a search skips straight
    # to, so most texts are cleared without a substitution.
    return chars, re.compile(f"[{chars}]{judge}"), {c: re.compile(c + judge) for c in chars}


# The context rules run after the others so they judge the neighbours that
# will remain, which keeps sanitize idempotent. Each opens with the character
# it judges and looks from there.
_CONTEXT_PASSES: tuple[_ContextPass, ...] = (
    # A presentation selector stays only after a visible character that is not
    # itself a selector or joiner: one per character, never a run.
    _context_pass(_PRESENTATION, f"(?<![^\\s{_JOINERS}{_PRESENTATION}][{_PRESENTATION}])"),
    _context_pass(
        _JOINERS,
        f"(?!(?:(?<=[{PICTO}]\u200d)|(?<=[{PICTO}][{_PRESENTATION}]\u200d))(?=[{PICTO}]))"
        f"(?!(?<=[{JOINING_SCRIPT}][{_JOINERS}])(?=[{JOINING_SCRIPT}]))",
    ),
)
_CONTEXTUAL = frozenset(_JOINERS + _PRESENTATION)  # kept or dropped by their neighbours


def _has_astral(text: str) -> bool:
    # UTF-16 spends two units on each character beyond the BMP; encoding is a
    # near-copy, far cheaper than looking for astral ranges that cannot be there.
    return not text.isascii() and len(text.encode("utf-16-le", "surrogatepass")) > 2 * len(text)


def strip_unicode(text: str, changes: dict[str, int]) -> str:
    """Remove terminal control and invisible characters, counting them by kind into ``changes``."""
    found = set(_UNICODE_WORK.findall(text))
    if _has_astral(text) and any(pattern.search(text) for pattern in _ASTRAL_WORK):
        found.add("\U000e0000")  # stands for all of them: it selects the same passes
    # Run only the passes that can match: emoji, the common non-ASCII case,
    # need just the context passes.
    passes: tuple[_Pass, ...] = ()
    if found - _CONTEXTUAL:
        passes = _ASCII_PASSES if text.isascii() else _STRIP_PASSES
    for kind, pattern, replacement in passes:
        n = 0
        if kind == "newline" and "\r\n" in text:  # str.replace beats a regex alternation
            n = text.count("\r\n")
            text = text.replace("\r\n", "\n")
        text, m = pattern.subn(replacement, text)
        n += m
        if n:
            changes[kind] = changes.get(kind, 0) + n
    if not found & _CONTEXTUAL:
        return text
    # A context pass runs only if some character of its would go.
    for chars, pattern, by_char in _CONTEXT_PASSES:
        if any(by_char[c].search(text) for c in found.intersection(chars)):
            text, n = pattern.subn("", text)
            if n:
                changes["invisible"] = changes.get("invisible", 0) + n
    return text
