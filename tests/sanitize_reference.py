"""Pre-optimisation implementation of ``ccc_relay.policy.sanitize``.

It is frozen but for changes of a rule itself, made here and in the fast one
together: tests/test_sanitize_equivalence.py proves the fast one equivalent to
it. Its original docstring follows.

Message sanitisation: the one rule for what a stored message body may contain.

Every body passes through :func:`sanitize` before it is stored, so no reader
(a model, a terminal, ``ccc audit tail``) ever sees:

* terminal control: C0/C1 control characters other than ``\\n`` and ``\\t``, and
  ANSI escape sequences (CSI, OSC including OSC 8 hyperlinks, DCS/APC/PM/SOS,
  lone ESC). Line endings ``\\r\\n``, ``\\r``, U+2028 and U+2029 become ``\\n``;
* invisible Unicode: bidi controls, zero-width and other format characters that
  render as nothing, stray variation selectors and Unicode tag characters (the
  "ASCII smuggling" block), and lone surrogates (not encodable as UTF-8). Text
  is then normalised to NFC;
* secrets (``redact_secrets``): private keys, API tokens, JWTs, this project's
  own ``ccc1.`` credentials and high-entropy ``key=``/``token:``/``password=``
  values become ``[redacted:KIND]``;
* filesystem paths (``paths``): absolute paths under a well-known file-system
  root or with a ``..`` segment, ``file:`` URLs, ``~/`` and ``../`` paths are
  escaped to an inert, labelled form (or redacted), as the specification asks.

Three kinds of invisible character stay, because removing them would break
ordinary text: U+200D (ZWJ) inside an emoji sequence, U+200C/U+200D between two
letters of a script that needs joiners (Arabic, Syriac, N'Ko, Mongolian, Indic),
and one U+FE0E/U+FE0F right after a visible character. Each carries at most a
bit or so per visible character, far below the many-per-character channel of
zero-width or tag encodings.

The function is pure and never raises on a ``str``. The relay runs it on every
message, so each rule starts with a literal the regex engine can skip to, and
rare rules run only when a cheap substring test says they could match.

detect-secrets (Yelp) was evaluated for the secret rules and not used: its
ad-hoc ``scan_line`` costs ~0.9 ms for 64 B and ~8 ms for 1 KiB and flags
ordinary words as "high entropy strings"; its plugins return values, not spans
(the GitHub plugin returns just ``ghp``), its private-key plugin sees only the
BEGIN line, it has no Anthropic key rule, and it keeps process-wide settings.
The token formats below are the same public formats its plugins match.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from ccc_relay.credentials import CREDENTIAL_BYTES, PREFIX

PathMode = Literal["escape", "redact", "off"]

# Upper bound on len(output) / len(input). Escaping a path costs at most 6x
# ("/%/" -> "[path:%2F%25%2F]"), every redaction marker is shorter than 6x what
# it replaces, and NFC can triple a few characters (U+FB2C) before that.
MAX_EXPANSION = 18


@dataclass(frozen=True, slots=True)
class SanitizeOptions:
    enabled: bool = True  # master switch (config `sanitize: false` turns all off)
    paths: PathMode = "escape"
    redact_secrets: bool = True


_DEFAULT_OPTIONS = SanitizeOptions()

# Stable change kinds, in the order describe() reports them.
_KIND_TEXT = {
    "ansi": "removed {n} terminal escape sequence{s}",
    "control": "removed {n} control character{s}",
    "surrogate": "removed {n} unpaired surrogate{s}",
    "newline": "normalised {n} line ending{s} to \\n",
    "bidi": "removed {n} bidirectional control{s}",
    "invisible": "removed {n} invisible character{s}",
    "tag": "removed {n} Unicode tag character{s}",
    "nfc": "normalised the text to Unicode NFC",
}


@dataclass(frozen=True, slots=True)
class Sanitized:
    text: str
    changes: dict[str, int]  # stable kind -> count; never any of the content
    secret_kinds: dict[str, int] = field(default_factory=dict)  # e.g. {"github-token": 1}
    path_action: str = "escaped"

    def describe(self) -> list[str]:
        """Say what changed, one sentence per kind, without quoting any content."""
        lines: list[str] = []
        for kind, template in _KIND_TEXT.items():
            n = self.changes.get(kind, 0)
            if n:
                lines.append(template.format(n=n, s="" if n == 1 else "s"))
        n = self.changes.get("secret", 0)
        if n:
            kinds = ", ".join(sorted(self.secret_kinds))
            lines.append(f"redacted {n} secret{'' if n == 1 else 's'} ({kinds})")
        n = self.changes.get("path", 0)
        if n:
            lines.append(f"{self.path_action} {n} filesystem path{'' if n == 1 else 's'}")
        return lines


# --- terminal control and invisible Unicode ---------------------------------

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
_BIDI_CHARS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_TAG_CHARS = "\U000e0000-\U000e007f"
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
_INVISIBLE_CHARS = _INVISIBLE_BMP + _INVISIBLE_ASTRAL
_JOINERS = "\u200c\u200d"
_PRESENTATION = "\ufe0e\ufe0f"
# Characters that take part in emoji ZWJ sequences (Extended_Pictographic and
# the skin-tone modifiers, approximated by block; Python has no such property).
_PICTO = (
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194-\u21aa\u231a-\u23ff\u24c2"
    "\u25aa-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff"
)
# Scripts whose spelling uses ZWJ/ZWNJ between letters (Persian, Hindi, ...).
_JOINING_SCRIPT = "\u0600-\u07ff\u0800-\u08ff\u0900-\u0dff\u1800-\u18af\ufb50-\ufdff\ufe70-\ufefc"

_CONTEXTUAL = frozenset(_JOINERS + _PRESENTATION)  # kept or dropped by their neighbours
# Which characters need work. The regex engine tests a character against a
# class of BMP ranges with one table lookup but walks astral ranges one by
# one, so the astral ones are found with two single-range searches that
# emoji (U+1F000 and up) never hit.
_UNICODE_WORK = re.compile(
    f"[{_CONTROL_CHARS}\r\u2028\u2029\ud800-\udfff{_BIDI_CHARS}{_INVISIBLE_BMP}"
    f"{_JOINERS}{_PRESENTATION}]"
)
_ASTRAL_WORK = (re.compile("[\U000e0000-\U000e01ef]"), re.compile("[\U00013430-\U0001d17a]"))
_PRINTABLE_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n"

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
    ("bidi", re.compile(f"[{_BIDI_CHARS}]"), ""),
    ("tag", re.compile(f"[{_TAG_CHARS}]"), ""),
    ("invisible", re.compile(f"[{_INVISIBLE_CHARS}]"), ""),
)
# The context rules run after the others so they judge the neighbours that
# will remain, which keeps sanitize idempotent. Each opens with the character
# it judges and looks back from there, so a search skips straight to it.
_CONTEXT_PASSES: tuple[_Pass, ...] = (
    # A presentation selector stays only after a visible character that is not
    # itself a selector or joiner: one per character, never a run.
    (
        "invisible",
        re.compile(f"[{_PRESENTATION}](?<![^\\s{_JOINERS}{_PRESENTATION}][{_PRESENTATION}])"),
        "",
    ),
    (
        "invisible",
        re.compile(
            f"[{_JOINERS}]"
            f"(?!(?:(?<=[{_PICTO}]\u200d)|(?<=[{_PICTO}][{_PRESENTATION}]\u200d))(?=[{_PICTO}]))"
            f"(?!(?<=[{_JOINING_SCRIPT}][{_JOINERS}])(?=[{_JOINING_SCRIPT}]))"
        ),
        "",
    ),
)


def _has_astral(text: str) -> bool:
    # UTF-16 spends two units on each character beyond the BMP; encoding is a
    # near-copy, far cheaper than searching for astral ranges that cannot be there.
    return not text.isascii() and len(text.encode("utf-16-le", "surrogatepass")) > 2 * len(text)


def _strip_unicode(text: str, changes: dict[str, int]) -> str:
    found = set(_UNICODE_WORK.findall(text))
    if _has_astral(text) and any(pattern.search(text) for pattern in _ASTRAL_WORK):
        found.add("\U000e0000")  # stands for all of them: it selects the same passes
    # Run only the passes that can match: emoji, the common non-ASCII case,
    # need just the context passes.
    passes: tuple[_Pass, ...] = ()
    if found - _CONTEXTUAL:
        passes = _ASCII_PASSES if text.isascii() else _STRIP_PASSES
    if found & _CONTEXTUAL:
        passes += _CONTEXT_PASSES
    for kind, pattern, replacement in passes:
        n = 0
        if kind == "newline" and "\r\n" in text:  # str.replace beats a regex alternation
            n = text.count("\r\n")
            text = text.replace("\r\n", "\n")
        text, m = pattern.subn(replacement, text)
        n += m
        if n:
            changes[kind] = changes.get(kind, 0) + n
    return text


# --- secrets ----------------------------------------------------------------

_CREDENTIAL_CHARS = math.ceil(CREDENTIAL_BYTES * 4 / 3)  # unpadded base64url
_CCC = re.escape(PREFIX)
_PEM = r"[A-Za-z0-9+/=\s:,.()\-]"  # base64 lines and "Proc-Type: 4,ENCRYPTED" headers
# (kind, gate, pattern): each pattern opens with a literal so a search skips
# straight to candidates, and the lookbehind right after it checks the token is
# not the tail of a longer word. The rule runs only if its ASCII gate occurs
# in the text's ASCII bytes: a byte-string search costs a fraction of a regex
# search, above all on non-ASCII text.
# Each rule: its kind, the literals one of which a match must contain (a cheap
# bytes search that skips the regex for almost every body), and the regex.
_TOKEN_RULES: tuple[tuple[str, tuple[bytes, ...], re.Pattern[str]], ...] = (
    (
        "private-key",
        (b"-----BEGIN ",),
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY(?: BLOCK)?-----"
            # Up to the END line or, for a truncated key, as far as PEM text goes.
            rf"{_PEM}*?(?:-----END (?:[A-Z0-9]+ ){{0,4}}PRIVATE KEY(?: BLOCK)?-----|(?!{_PEM}))"
        ),
    ),
    ("openai-key", (b"sk-",), re.compile(r"sk-(?<![\w-]sk-)(?P<anthropic_key>ant-)?[\w-]{20,}")),
    ("github-token", (b"gh",), re.compile(r"gh(?<![\w-]gh)[pousr]_[A-Za-z0-9]{36,}")),
    ("github-token", (b"github_pat_",), re.compile(r"github_pat_(?<![\w-]github_pat_)\w{22,}")),
    (
        "aws-access-key-id",
        (b"AKIA", b"ASIA", b"ABIA", b"ACCA"),  # not just "A": most prose has one
        re.compile(r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])"),
    ),
    ("slack-token", (b"xox",), re.compile(r"xox(?<![\w-]xox)[abprs]-[A-Za-z0-9-]{10,}")),
    ("jwt", (b"eyJ",), re.compile(r"eyJ(?<![\w-]eyJ)[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*")),
    (
        "ccc-credential",
        (PREFIX.encode("ascii"),),
        re.compile(rf"{_CCC}(?<![\w.-]{_CCC})[\w-]{{{_CREDENTIAL_CHARS}}}(?![\w-])"),
    ),
)
# key=value, "token": "value", password: value, Authorization: Bearer value.
_KEYWORD = re.compile(
    r"(?i:(?P<keyword>passw(?:or)?d|passphrase|pwd|secret|token|key|auth\w*|credential)s?)"
    r"[\w-]*[\"']?[ \t]*[:=][ \t]*[\"']?(?:(?i:bearer|basic|token)[ \t]+)?"
    r"(?P<value>(?!\[redacted:)[^\s\"'`,;]{6,})"
)
_KEYWORD_HINTS = ("pass", "pwd", "secret", "token", "key", "cred", "auth")
_KEYWORD_HINT_BYTES = tuple(hint.encode("ascii") for hint in _KEYWORD_HINTS)
_PASSWORD_WORDS = frozenset({"password", "passwd", "passphrase", "pwd"})
_MIN_SECRET_VALUE = 16  # shorter key=/token: values are ids and words, not secrets
_MIN_ENTROPY = 3.0  # bits per character; words and dates stay below, keys above
_TEMPLATE_START = tuple("$<{%*")  # ${VAR}, <your-key>, {{secret}}, %s, ****: no secret here


def _entropy(value: str) -> float:
    # H = log2(n) - sum(c * log2(c)) / n; characters seen once add nothing to the sum.
    n = len(value)
    return math.log2(n) - sum(c * math.log2(c) for c in Counter(value).values() if c > 1) / n


def _assigned_secret_kind(m: re.Match[str]) -> str | None:
    keyword, value = m["keyword"].lower(), m["value"]
    if value.startswith(_TEMPLATE_START):
        return None
    has_digit = any(c.isdigit() for c in value)
    if keyword in _PASSWORD_WORDS:
        # Passwords are secret whatever their entropy; prose ("password: required") is not.
        prose = value.isalpha() and (value.islower() or value.isupper() or value.istitle())
        return None if prose and not has_digit else "password"
    if not (
        len(value) >= _MIN_SECRET_VALUE
        and has_digit
        and any(c.isalpha() for c in value)
        and _entropy(value) >= _MIN_ENTROPY
    ):
        return None
    before = m.string[max(0, m.start() - 24) : m.start()].lower()
    return "aws-secret-key" if "aws" in before else "assigned-secret"


def _keyword_matches(text: str) -> Iterator[re.Match[str]]:
    # Gate on lower-cased ASCII bytes: lower-casing bytes is a table lookup,
    # lower-casing non-ASCII text is not, and most texts name no keyword.
    hinted = text.encode("ascii", "ignore").lower()
    for gate in _KEYWORD_HINT_BYTES:
        if gate in hinted:
            break
    else:
        return
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two; positions drift
        yield from _KEYWORD.finditer(text)
        return
    # Try the regex only where a keyword starts, not at every position.
    starts: set[int] = set()
    for hint in _KEYWORD_HINTS:
        i = lowered.find(hint)
        while i != -1:
            starts.add(i)
            i = lowered.find(hint, i + 1)
    end = 0
    for i in sorted(starts):
        m = _KEYWORD.match(text, i) if i >= end else None
        if m:
            end = m.end()
            yield m


def _replace_token(kind: str, found: dict[str, int], m: re.Match[str]) -> str:
    if kind == "openai-key":
        if m["anthropic_key"]:
            kind = "anthropic-key"
        elif not (any(c.isdigit() for c in m[0]) and any(c.isalpha() for c in m[0][3:])):
            return m[0]  # a long hyphenated word, not a key
    found[kind] = found.get(kind, 0) + 1
    return f"[redacted:{kind}]"


def _redact_secrets(text: str, found: dict[str, int]) -> str:
    ascii_bytes = text.encode("ascii", "ignore")  # every token literal is ASCII
    for kind, gates, pattern in _TOKEN_RULES:
        for gate in gates:
            if gate in ascii_bytes:
                # A bare search is ~3x cheaper than sub with a callback when nothing matches.
                if pattern.search(text):
                    text = pattern.sub(partial(_replace_token, kind, found), text)
                break
    if ":" not in text and "=" not in text:
        return text
    pieces: list[str] = []
    last = 0
    for m in _keyword_matches(text):
        assigned = _assigned_secret_kind(m)
        if assigned is not None:
            found[assigned] = found.get(assigned, 0) + 1
            pieces += (text[last : m.start("value")], f"[redacted:{assigned}]")
            last = m.end()
    return "".join((*pieces, text[last:])) if pieces else text


# --- filesystem paths -------------------------------------------------------

_SEG = r"[\w.@%+~-]+"
_SEG_CHARS = "\\w.@%+~-"
# A path starts the text or follows whitespace or opening punctuation, never a
# letter or a slash: that keeps "1/2", "and/or", "https://x/y" and "src/app.py" out.
_BOUNDARY = "\\s(\\[{<\"'`=,;:|"
_ABSOLUTE = re.compile(
    r"/(?:"
    rf"(?<=(?i:file:)/)/(?:localhost)?/{_SEG}"  # file:///etc/passwd
    rf"|(?<![^{_BOUNDARY}]/){_SEG}"
    rf")(?:/{_SEG})*/?"
)
_HOME = re.compile(rf"~(?<![^{_BOUNDARY}]~)(?:[^\W\d][\w.-]*)?/{_SEG}(?:/{_SEG})*/?")
_TRAVERSAL = re.compile(
    rf"(?<![^{_BOUNDARY}])(?:(?:{_SEG}/)*\.\./(?:{_SEG}(?:/{_SEG})*/?)?"
    rf"|(?:{_SEG}/)+\.\.(?![{_SEG_CHARS}]))"
)
_CHAIN = re.compile(f"[/{_SEG_CHARS}]*")
# An absolute path names the host's file system if it starts at one of these
# (or has a ".." segment); "/v2/orders" and "/compact" are routes and commands.
_ROOT_DIRS = frozenset(
    "bin boot dev etc home lib lib32 lib64 libx32 media mnt opt proc root run sbin snap srv "
    "sys tmp usr var app data work workspace workspaces nix "
    "Applications Library System Users Volumes private".split()
)


def _path_replacer(mode: PathMode, counted: list[int]) -> Callable[[re.Match[str]], str]:
    def replace(m: re.Match[str]) -> str:
        matched = m[0]
        path = matched.rstrip(".")  # a full stop ends the sentence, not the path
        if path.endswith("/") and matched[len(path) :].startswith(".."):
            path += ".."  # "a/.." ends in a ".." segment, not in two full stops
        tail = matched[len(path) :]
        if m.re is _ABSOLUTE and not path.startswith("//"):
            segments = [s for s in path.split("/") if s not in ("", ".")]
            if not segments or (segments[0] not in _ROOT_DIRS and ".." not in segments):
                return matched
        counted[0] += 1
        if mode == "redact":
            return "[path]" + tail
        # Every byte but "/" and NUL is legal in a file name, so the only way to
        # make a path inert is to take its separators away; percent-encoding
        # does that reversibly, in ASCII, in a form models and people can read.
        return "[path:" + path.replace("%", "%25").replace("/", "%2F") + "]" + tail

    return replace


def _sub_traversals(text: str, replace: Callable[[re.Match[str]], str]) -> str:
    """``_TRAVERSAL.sub(replace, text)``, driven by the ``..`` literals.

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
        m = _TRAVERSAL.match(text, start)
        if m:
            pieces += (text[last:start], replace(m))
            last = floor = m.end()
        else:
            # No match can start inside this chain: it has no boundary in it.
            chain = _CHAIN.match(text, start)
            floor = max(i + 2, chain.end() if chain else 0)
        i = text.find("..", floor)
    return "".join((*pieces, text[last:])) if pieces else text


def _rewrite_paths(text: str, mode: PathMode) -> tuple[str, int]:
    counted = [0]
    replace = _path_replacer(mode, counted)
    if _ABSOLUTE.search(text):
        text = _ABSOLUTE.sub(replace, text)
    if "~" in text:
        text = _HOME.sub(replace, text)
    if ".." in text:
        text = _sub_traversals(text, replace)
    return text, counted[0]


# --- the one entry point ----------------------------------------------------


def sanitize(text: str, options: SanitizeOptions = _DEFAULT_OPTIONS) -> Sanitized:
    """Return ``text`` made safe to store and show, and what was changed.

    Never raises for any ``str``: every rule is a total function over strings.
    """
    if not options.enabled:
        return Sanitized(text, {})
    changes: dict[str, int] = {}
    if text.isascii():
        # bytes.translate deletes the printable bytes in one C loop: whatever
        # is left is a control character. Far cheaper than a regex scan.
        if text.encode("ascii").translate(None, _PRINTABLE_ASCII):
            text = _strip_unicode(text, changes)
    else:
        text = _strip_unicode(text, changes)
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
            changes["nfc"] = 1
    secret_kinds: dict[str, int] = {}
    if options.redact_secrets:
        text = _redact_secrets(text, secret_kinds)
        if secret_kinds:
            changes["secret"] = sum(secret_kinds.values())
    if options.paths != "off" and "/" in text:
        text, n = _rewrite_paths(text, options.paths)
        if n:
            changes["path"] = n
    path_action = "redacted" if options.paths == "redact" else "escaped"
    return Sanitized(text, changes, secret_kinds, path_action)
