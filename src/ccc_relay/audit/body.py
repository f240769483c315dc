"""What the audit keeps of a message body, as ``daemon.audit.log_all_messages`` says.

All of the body less any secret, or only its size and SHA-256. Kept apart from
the writer because it is the relay, not the log, that decides what goes into a
line: the log chains whatever fields it is given.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ccc_relay.policy.sanitize import SanitizeOptions, sanitize

_AUDIT_COPY = SanitizeOptions(paths="off")  # secrets out; paths are not the audit's business


def body_fields(
    body: str, log_all_messages: bool, *, secrets_removed: bool = False
) -> dict[str, Any]:
    """What the audit keeps of a body: all of it less any secret, or only its size and hash.

    A credential must never reach an audit line: unless the caller says the
    body already went through secret redaction (``secrets_removed``, the
    relay's own pass), the audit copy is scrubbed here. ``size`` is the body's
    size as stored.
    """
    data = body.encode("utf-8")
    if not log_all_messages:
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if secrets_removed:
        return {"body": body, "size": len(data)}
    kept = sanitize(body, _AUDIT_COPY)
    fields: dict[str, Any] = {"body": kept.text, "size": len(data)}
    if kept.secret_kinds:
        fields["redacted"] = sorted(kept.secret_kinds)
    return fields
