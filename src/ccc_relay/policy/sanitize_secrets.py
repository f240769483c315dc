"""Secrets in message bodies: what :func:`redact_secrets` replaces with ``[redacted:KIND]``.

Private keys, API tokens, JWTs, this project's own ``ccc1.`` credentials and
high-entropy ``key=``/``token:``/``password=`` values.

detect-secrets (Yelp) was evaluated for these rules and not used: its ad-hoc
``scan_line`` costs ~0.9 ms for 64 B and ~8 ms for 1 KiB and flags ordinary
words as "high entropy strings"; its plugins return values, not spans (the
GitHub plugin returns just ``ghp``), its private-key plugin sees only the BEGIN
line, it has no Anthropic key rule, and it keeps process-wide settings. The
token formats below are the same public formats its plugins match.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from functools import partial

from ccc_relay.credentials import CREDENTIAL_BYTES, PREFIX
from ccc_relay.policy.sanitize_skeleton import skeleton_of

_CREDENTIAL_CHARS = math.ceil(CREDENTIAL_BYTES * 4 / 3)  # unpadded base64url
_CCC = re.escape(PREFIX)
_PEM = r"[A-Za-z0-9+/=\s:,.()\-]"  # base64 lines and "Proc-Type: 4,ENCRYPTED" headers
_TokenRule = tuple[str, tuple[str, ...], re.Pattern[str]]


def _rule(kind: str, literals: tuple[str, ...], pattern: str) -> _TokenRule:
    marks = tuple(dict.fromkeys(skeleton_of(literal) for literal in literals))
    return kind, marks, re.compile(pattern)


# Each rule: its kind, the skeletons of the literals one of which every match
# contains (if a body's skeleton holds none of them, as almost no body's does,
# the regex is skipped), and the regex. Each regex opens with a literal so a
# search skips straight to candidates, and the lookbehind right after it
# checks the token is not the tail of a longer word.
_TOKEN_RULES: tuple[_TokenRule, ...] = (
    _rule(
        "private-key",
        ("-----BEGIN ",),
        r"-----BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY(?: BLOCK)?-----"
        # Up to the END line or, for a truncated key, as far as PEM text goes.
        rf"{_PEM}*?(?:-----END (?:[A-Z0-9]+ ){{0,4}}PRIVATE KEY(?: BLOCK)?-----|(?!{_PEM}))",
    ),
    _rule("openai-key", ("sk-",), r"sk-(?<![\w-]sk-)(?P<anthropic_key>ant-)?[\w-]{20,}"),
    _rule(
        "github-token",
        tuple(f"gh{c}_" for c in "pousr"),
        r"gh(?<![\w-]gh)[pousr]_[A-Za-z0-9]{36,}",
    ),
    _rule("github-token", ("github_pat_",), r"github_pat_(?<![\w-]github_pat_)\w{22,}"),
    _rule(
        "aws-access-key-id",
        ("AKIA", "ASIA", "ABIA", "ACCA"),
        r"A(?<![A-Z0-9]A)(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])",
    ),
    _rule(
        "slack-token",
        tuple(f"xox{c}-" for c in "abprs"),
        r"xox(?<![\w-]xox)[abprs]-[A-Za-z0-9-]{10,}",
    ),
    _rule("jwt", ("eyJ",), r"eyJ(?<![\w-]eyJ)[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]*"),
    _rule(
        "ccc-credential",
        (PREFIX,),
        rf"{_CCC}(?<![\w.-]{_CCC})[\w-]{{{_CREDENTIAL_CHARS}}}(?![\w-])",
    ),
)
# A skeleton that holds none of these holds no rule's marks: they are all the
# rules' marks less those that hold another (which is there whenever they are).
_TOKEN_MARKS = tuple(
    mark
    for mark in dict.fromkeys(mark for _, marks, _ in _TOKEN_RULES for mark in marks)
    if not any(other != mark and other in mark for _, marks, _ in _TOKEN_RULES for other in marks)
)
# key=value, "token": "value", password: value, Authorization: Bearer value.
KEYWORD = re.compile(
    r"(?i:(?P<keyword>passw(?:or)?d|passphrase|pwd|secret|token|key|auth\w*|credential)s?)"
    r"[\w-]*[\"']?[ \t]*[:=][ \t]*[\"']?(?:(?i:bearer|basic|token)[ \t]+)?"
    r"(?P<value>(?!\[redacted:)[^\s\"'`,;]{6,})"
)
_KEYWORD_HINTS = ("pass", "pwd", "secret", "token", "key", "cred", "auth")
_PASSWORD_WORDS = frozenset({"password", "passwd", "passphrase", "pwd"})
_MIN_SECRET_VALUE = 16  # shorter key=/token: values are ids and words, not secrets
_MIN_ENTROPY = 3.0  # bits per character; words and dates stay below, keys above
_TEMPLATE_START = tuple("$<{%*")  # ${VAR}, <your-key>, {{secret}}, %s, ****: no secret here


# A sign could end the key of a KEYWORD match only if a value of six or more
# characters (or a five-letter "basic"/"token" and a space before one) could
# follow it. Two colons before long values are let go first, as their keys are
# known to hold no keyword: a URL's after "http" or "https", the commonest in
# prose, and a marker's after "[redacted", which every redaction leaves.
_VALUE_AFTER = r"(?=[ \t]*[\"']?(?:[^\s\"'`,;]{6}|[^\s\"'`,;]{5}[ \t]))"
_KNOWN_KEY = r"(?<=https:)(?<![\w-]https:)|(?<=http:)(?<![\w-]http:)|(?<=\[redacted:)"
# One regex per sign: a literal first character lets the search skip to it,
# where a class of two would be tried at every position.
_SIGNS = (
    ("=", re.compile(f"={_VALUE_AFTER}")),
    (":", re.compile(f":(?!{_KNOWN_KEY}){_VALUE_AFTER}")),
)
_KEY_WINDOW = 16  # key characters looked at before a sign; a longer run may hold anything
_KEY_RUN = re.compile(r"[\w-]+")


def _key_may_hold_keyword(text: str, sign: int) -> bool:
    """Whether a KEYWORD match could have its key end at ``text[sign]``.

    The key is a keyword, then word characters, an optional quote and spaces,
    so the keyword lies in the run of word characters before the quote and
    the spaces. A run that fills the window, or a window with non-ASCII
    characters (ignoring case, the Kelvin sign matches "k" and the long s
    matches "s"), is given the benefit of the doubt.
    """
    end = sign
    while end and text[end - 1] in " \t":
        end -= 1
    if end and text[end - 1] in "\"'":
        end -= 1
    start = max(0, end - _KEY_WINDOW)
    window = text[start:end]
    if (start and _KEY_RUN.fullmatch(window)) or not window.isascii():
        return True
    window = window.lower()
    return any(hint in window for hint in _KEYWORD_HINTS)


def _may_hold_assignment(text: str, skeleton: str) -> bool:
    """False only if no KEYWORD match can be found in ``text``."""
    for sign, signs in _SIGNS:
        if sign in skeleton:
            m = signs.search(text)
            while m:
                if _key_may_hold_keyword(text, m.start()):
                    return True
                m = signs.search(text, m.end())
    return False


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


def keyword_matches(text: str) -> Iterator[re.Match[str]]:
    """The ``KEYWORD`` matches that :func:`redact_secrets` judges, left to right."""
    # Gate on the lower-cased ASCII characters: lower-casing bytes is a table
    # lookup, lower-casing non-ASCII text is not, and most texts name no
    # keyword. Looked for in a str: "in" on bytes pays for an exception.
    hinted = text.encode("ascii", "ignore").lower().decode("ascii")
    for hint in _KEYWORD_HINTS:
        if hint in hinted:
            break
    else:
        return
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two; positions drift
        yield from KEYWORD.finditer(text)
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
        m = KEYWORD.match(text, i) if i >= end else None
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


def _redact_tokens(text: str, found: dict[str, int], skeleton: str) -> tuple[str, str]:
    for kind, marks, pattern in _TOKEN_RULES:
        for mark in marks:
            if mark in skeleton:
                # A bare search is ~3x cheaper than sub with a callback when nothing matches.
                if pattern.search(text):
                    text = pattern.sub(partial(_replace_token, kind, found), text)
                    skeleton = skeleton_of(text)  # the later rules judge the new text
                break
    return text, skeleton


def redact_secrets(text: str, found: dict[str, int], skeleton: str) -> tuple[str, str | None]:
    """Redact every secret in ``text``, counting them by kind into ``found``.

    ``skeleton`` is ``text``'s skeleton. Returns the text and its skeleton, or
    ``None`` in place of a skeleton that would cost a fresh pass to rebuild.
    """
    for mark in _TOKEN_MARKS:
        if mark in skeleton:
            text, skeleton = _redact_tokens(text, found, skeleton)
            break
    if not _may_hold_assignment(text, skeleton):
        return text, skeleton
    pieces: list[str] = []
    last = 0
    for m in keyword_matches(text):
        assigned = _assigned_secret_kind(m)
        if assigned is not None:
            found[assigned] = found.get(assigned, 0) + 1
            pieces += (text[last : m.start("value")], f"[redacted:{assigned}]")
            last = m.end()
    if not pieces:
        return text, skeleton
    return "".join((*pieces, text[last:])), None
