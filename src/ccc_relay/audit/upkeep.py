"""Upkeep of the log: retention cuts, signed checkpoints and seals, all lines of the chain.

Retention deletes whole day files past ``retention`` (the rule is in
``retention.py``), recording the cut as a line before anything is deleted and
never touching the file being written. A checkpoint signs the current head
(the rule is in ``signing.py``), and is skipped when the head already is one
(or a seal). A seal ends the current epoch with a MAC of the current head
(the rule is in ``sealing.py``); the epoch's key is destroyed by
``settle_seal`` only once relay.db has committed a head at or past the seal,
so a crash can never leave a key destroyed whose seal was not kept. The daemon
runs all three at start and then periodically; they are written by the
committer thread like every other line.

A mixin of ``AuditLog``: it uses the log's head (``seq``, ``head``), its open
day and its ``append``/``_enter``/``_chain``/``_flush``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ccc_relay.audit import retention as _retention
from ccc_relay.audit.files import audit_files, day_of_file, decode_line, line_hash, read_tail
from ccc_relay.audit.records import AuditRecord, fsync_dir
from ccc_relay.audit.sealing import SEAL, Sealer
from ccc_relay.audit.signing import CHECKPOINT, checkpoint_fields

log = logging.getLogger("ccc_relay.audit")


class Upkeep:
    # Provided by AuditLog.
    log_dir: Path
    seq: int
    head: str
    _day: str | None
    _floor: str | None
    _checkpointed: int
    _sealed: int
    _seal_due: int
    sealer: Sealer | None
    append: Callable[[Sequence[AuditRecord]], None]
    _enter: Callable[[float, list[bytes]], None]
    _chain: Callable[[float, str, dict[str, Any]], bytes]
    _flush: Callable[..., None]

    def checkpoint(self, now: float, key: Ed25519PrivateKey) -> bool:
        """Append a line signing the current head; False when the head already is one.

        Raises OSError on I/O failure.
        """
        if self.seq == 0 or self.seq in (self._checkpointed, self._sealed):
            return False
        ts = round(now, 6)  # what the line will hold, and so what the signature covers
        lines: list[bytes] = []
        self._enter(ts, lines)
        lines.append(self._chain(ts, CHECKPOINT, checkpoint_fields(key, self.seq, self.head, ts)))
        self._flush(lines)
        self._checkpointed = self.seq
        return True

    def seal(self, now: float) -> bool:
        """Append a seal line over the current head with this epoch's key (fsynced).

        False when there is no seal key, when the head already is a seal, or
        while the last seal is not settled (its key is still this epoch's).
        Raises OSError on I/O failure.
        """
        sealer = self.sealer
        if sealer is None or self.seq == 0 or self.seq == self._sealed or self._seal_due:
            return False
        ts = round(now, 6)  # what the line will hold, and so what the MAC covers
        lines: list[bytes] = []
        self._enter(ts, lines)
        lines.append(self._chain(ts, SEAL, sealer.fields(self.seq, self.head, ts)))
        self._flush(lines)
        self._sealed = self._seal_due = self.seq
        return True

    def settle_seal(self, committed: int) -> bool:
        """Destroy the sealed epoch's key once ``committed`` (the seq of the head relay.db
        has committed) reaches the seal; True when the key evolved. Raises OSError."""
        if not self._seal_due or committed < self._seal_due or self.sealer is None:
            return False
        self.sealer.evolve()
        self._seal_due = 0
        return True

    def apply_retention(self, now: float, retention: float) -> list[Path]:
        """Delete the whole day files past ``retention``, recording the cut first.

        Returns the files deleted. A file that cannot be deleted is logged and
        kept (the next run tries again). Raises OSError when the cut line
        cannot be written; then nothing is deleted.
        """
        files = audit_files(self.log_dir)
        days = [day_of_file(path) or "" for path in files]
        expired = files[: _retention.expired_count(days, now, retention)]
        current = self._day or self._floor
        expired = [p for p in expired if current is None or (day_of_file(p) or "") < current]
        if not expired:
            return []
        ending = next(
            ((p, t.last) for p in reversed(expired) if (t := read_tail(p)).last is not None), None
        )
        if ending is None:
            return self._unlink(expired)  # empty files hold nothing of the chain
        path, last = ending
        try:
            seq = int(decode_line(last)["seq"])
        except ValueError as exc:
            # Deleting now would also delete the evidence; verify will name the damage.
            log.error("audit retention skipped: the last line of %s is damaged (%s)", path, exc)
            return []
        fields = _retention.cut_fields([p.name for p in expired], seq, line_hash(last), retention)
        self.append([AuditRecord(now, _retention.RETENTION_CUT, fields)])
        return self._unlink(expired)

    def _unlink(self, paths: Sequence[Path]) -> list[Path]:
        deleted = []
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("audit retention could not delete %s: %s", path, exc)
                continue
            deleted.append(path)
        if deleted:
            fsync_dir(self.log_dir)
        return deleted
