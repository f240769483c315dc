"""Message sanitisation: the one rule for what a stored message body may contain.

Every body passes through :func:`sanitize` before it is stored, so no reader
(a model, a terminal, ``ccc audit tail``) ever sees:

* terminal control and invisible Unicode (:mod:`.sanitize_unicode`): C0/C1
  control characters other than ``\\n`` and ``\\t``, ANSI escape sequences,
  bidi controls, zero-width and other characters that render as nothing, stray
  variation selectors, Unicode tag characters and lone surrogates. Line endings
  become ``\\n`` and text is then normalised to NFC;
* secrets (``redact_secrets``, :mod:`.sanitize_secrets`): private keys, API
  tokens, JWTs, this project's own ``ccc1.`` credentials and high-entropy
  ``key=``/``token:``/``password=`` values become ``[redacted:KIND]``;
* filesystem paths (``paths``, :mod:`.sanitize_paths`): absolute paths under a
  well-known file-system root (``/etc``, ``/home``, ``/tmp``...) or with a
  ``..`` segment, ``file:`` URLs, ``~/`` and ``../`` paths are escaped to an
  inert, labelled form (or redacted), as the specification asks; API routes
  such as ``/v2/orders`` are not paths and stay as written.

The function is pure and never raises on a ``str``. The relay runs it on every
message, and most messages need nothing done, so that case is made cheap: one
``bytes.translate`` builds the body's skeleton (:mod:`.sanitize_skeleton`), a
few dozen characters that say whether an ASCII body has control characters
and whether any secret rule could match at all; the assignment rule is judged
only at the ``:`` and ``=`` signs a value could follow, by the key before
them; and each remaining rule starts with a literal the regex engine can skip
to. Each part of the work is in the module named above; this one decides what
runs and reports what changed.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, fields

from ccc_relay.policy import sanitize_paths, sanitize_secrets, sanitize_unicode
from ccc_relay.policy.sanitize_paths import PathMode, rewrite_paths
from ccc_relay.policy.sanitize_secrets import redact_secrets
from ccc_relay.policy.sanitize_skeleton import has_control, skeleton_of
from ccc_relay.policy.sanitize_unicode import strip_unicode

__all__ = ["MAX_EXPANSION", "PathMode", "SanitizeOptions", "Sanitized", "sanitize"]

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


# A frozen dataclass's __init__ sets each field with object.__setattr__, which
# looks the name up each time; the slots' own setters skip that and take half
# the time, which is a fair part of the cost of an ordinary message.
_new_sanitized = object.__new__
_set_text, _set_changes, _set_secret_kinds, _set_path_action = (
    getattr(Sanitized, f.name).__set__ for f in fields(Sanitized)
)


def _sanitized(
    text: str, changes: dict[str, int], secret_kinds: dict[str, int], path_action: str
) -> Sanitized:
    """The same as ``Sanitized(text, changes, secret_kinds, path_action)``, in half the time."""
    result: Sanitized = _new_sanitized(Sanitized)
    _set_text(result, text)
    _set_changes(result, changes)
    _set_secret_kinds(result, secret_kinds)
    _set_path_action(result, path_action)
    return result


# tests/test_sanitize.py checks these tables and scanners through this module.
_PICTO = sanitize_unicode.PICTO
_JOINING_SCRIPT = sanitize_unicode.JOINING_SCRIPT
_BIDI_CHARS = sanitize_unicode.BIDI_CHARS
_TAG_CHARS = sanitize_unicode.TAG_CHARS
_INVISIBLE_CHARS = sanitize_unicode.INVISIBLE_CHARS
_KEYWORD = sanitize_secrets.KEYWORD
_keyword_matches = sanitize_secrets.keyword_matches
_TRAVERSAL = sanitize_paths.TRAVERSAL
_sub_traversals = sanitize_paths.sub_traversals


def sanitize(text: str, options: SanitizeOptions = _DEFAULT_OPTIONS) -> Sanitized:
    """Return ``text`` made safe to store and show, and what was changed.

    Never raises for any ``str``: every rule is a total function over strings.
    """
    if not options.enabled:
        return _sanitized(text, {}, {}, "escaped")
    changes: dict[str, int] = {}
    skeleton: str | None = None
    if text.isascii():
        skeleton = skeleton_of(text)
        if has_control(skeleton):
            text = strip_unicode(text, changes)
            skeleton = None
    else:
        text = strip_unicode(text, changes)
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
            changes["nfc"] = 1
    secret_kinds: dict[str, int] = {}
    if options.redact_secrets:
        if skeleton is None:
            skeleton = skeleton_of(text)
        text, skeleton = redact_secrets(text, secret_kinds, skeleton)
        if secret_kinds:
            changes["secret"] = sum(secret_kinds.values())
    if options.paths != "off" and "/" in text:
        text, n = rewrite_paths(text, options.paths, skeleton)
        if n:
            changes["path"] = n
    path_action = "redacted" if options.paths == "redact" else "escaped"
    return _sanitized(text, changes, secret_kinds, path_action)
