"""Agent credentials: creation, hashing, constant-time checks, safe files.

A credential is 256 random bits, written once to a file that is mounted into
that agent's container. The relay stores only its SHA-256 hash (a slow KDF buys
nothing for 256 random bits) and compares hashes in constant time.
``Credential`` masks itself in every repr and str so it cannot leak through a
log line or an exception message by accident.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

# hashlib, hmac and secrets are imported where they are used: the Claude Code
# hooks read a credential file and nothing more, and must start fast.

PREFIX = "ccc1."  # a recognisable prefix lets secret scanners find leaked credentials
CREDENTIAL_BYTES = 32  # 256 bits
MAX_CREDENTIAL_FILE = 4096


class CredentialError(ValueError):
    pass


class CredentialMissing(CredentialError):
    """The credential file named is not there (``path`` says where it was looked for)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"credential file {path} does not exist")
        self.path = path


class NoCredentialGiven(CredentialError):
    """No credential was named at all (no flag, no ``CCC_CREDENTIAL``)."""


class Credential:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def generate(cls) -> Credential:
        import secrets

        raw = secrets.token_bytes(CREDENTIAL_BYTES)
        return cls(PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"))

    def reveal(self) -> str:
        return self._value

    def digest(self) -> str:
        return hash_credential(self._value)

    def __repr__(self) -> str:
        return "Credential('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        import hmac

        return isinstance(other, Credential) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self.digest())


def hash_credential(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def matches(presented: str, stored_digest: str | None) -> bool:
    """Constant-time check of a presented credential against a stored hash.

    An unknown agent (``stored_digest`` None) costs the same work as a known
    one, so timing does not reveal which names exist.
    """
    import hmac

    candidate = hash_credential(presented)
    expected = stored_digest if stored_digest is not None else "0" * 64
    return hmac.compare_digest(candidate, expected) and stored_digest is not None


def credential_file_text(agent: str, credential: Credential) -> str:
    return (
        f"# ccc-relay credential of agent {agent}. Secret: mount it into that agent's\n"
        "# container only (read-only), never into another's.\n"
        f"agent: {agent}\n"
        f"credential: {credential.reveal()}\n"
    )


def write_credential_file(
    path: Path, agent: str, credential: Credential, *, replace: bool = False
) -> None:
    """Write agent and credential to ``path`` (see ``write_secret_file``)."""
    write_secret_file(path, credential_file_text(agent, credential), replace=replace)


def write_secret_file(
    path: Path,
    text: str,
    *,
    replace: bool = False,
    what: str = "a credential",
    error: type[CredentialError] = CredentialError,
) -> None:
    """Write ``text`` to ``path`` with mode 0600, never through a symlink.

    Without ``replace`` an existing file (or symlink) is an error
    (FileExistsError, from O_EXCL|O_NOFOLLOW); with it the new text is written
    beside the old and renamed over it, so a reader sees the old or the new
    secret, never half of one. Raises ``error`` for a symlink at ``path`` when
    replacing.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = path
    if replace:
        if path.is_symlink():
            raise error(f"{path} is a symlink; refusing to write {what} through it")
        import secrets

        target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(target, path)


def secret_file_fields(data: bytes) -> dict[str, str]:
    """The ``name: value`` lines of a credential or key file (``#`` lines are comments)."""
    fields: dict[str, str] = {}
    for line in data.decode("ascii", "replace").splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.lstrip().startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


def read_credential_file(path: str | os.PathLike[str]) -> tuple[str, Credential]:
    """Read a credential file: (agent name, credential).

    Raises CredentialError with a sentence that says what is wrong.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CredentialMissing(path) from None
    except PermissionError:
        raise CredentialError(f"credential file {path} is not readable by this user") from None
    except OSError as exc:
        raise CredentialError(f"cannot open credential file {path}: {exc.strerror}") from None
    try:
        data = os.read(fd, MAX_CREDENTIAL_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_CREDENTIAL_FILE:
        raise CredentialError(f"credential file {path} is too large to be a credential")
    fields = secret_file_fields(data)
    agent, value = fields.get("agent", ""), fields.get("credential", "")
    if not agent or not value.startswith(PREFIX) or len(value) < len(PREFIX) + 40:
        raise CredentialError(
            f"credential file {path} does not hold a ccc credential "
            "(expected 'agent:' and 'credential:' lines)"
        )
    return agent, Credential(value)
