"""The errors every client raises, apart from the protocol code so that a caller
that only catches them (the Claude Code hooks' short path) loads nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ccc_relay.credentials import CredentialError, CredentialMissing, NoCredentialGiven

if TYPE_CHECKING:
    from ccc_relay.protocol.frames import Error


class RelayError(Exception):
    """A refusal from the relay: ``code`` is stable, ``message`` is for humans."""

    def __init__(
        self, code: str, message: str, *, retry_after: float | None = None, seq: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.seq = seq

    @classmethod
    def from_frame(cls, frame: Error) -> RelayError:
        return cls(frame.code, frame.message, retry_after=frame.retry_after, seq=frame.seq)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            data["retry_after"] = self.retry_after
        return data


class RelayUnavailable(RelayError):
    """No relay answers at the socket (not running, wrong path, no permission)."""

    def __init__(self, message: str) -> None:
        super().__init__("relay_unavailable", message)


class SocketPermissionDenied(RelayUnavailable):
    """The relay's socket is there but this user may not connect to it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = "permission_denied"


def unreachable(path: object, exc: OSError) -> RelayUnavailable:
    """The sentence for a socket the client could not connect to."""
    if isinstance(exc, PermissionError):
        return SocketPermissionDenied(
            f"permission denied on {path}; this user is not in the relay socket's group "
            "(add it with 'usermod -aG GROUP USER', then log in again)"
        )
    return RelayUnavailable(f"no relay is listening on {path}; is ccc-statusd running?")


def credential_refusal(exc: CredentialError) -> RelayError:
    """A credential problem as a refusal with its own code and the next step.

    ``credential_missing`` when the file is not there (it is made by
    ``ccc agent add NAME`` on the relay's host, and mounted into the agent's
    container), ``credential_invalid`` for any other unusable credential.
    """
    if isinstance(exc, NoCredentialGiven):
        return RelayError("credential_missing", str(exc))
    if isinstance(exc, CredentialMissing):
        name = exc.path.stem if exc.path.suffix == ".cred" else "NAME"
        return RelayError(
            "credential_missing",
            f"{exc}: on the relay's host create it with 'ccc agent add {name}'; "
            "in a container mount it read-only and point CCC_CREDENTIAL at it ('ccc run' does)",
        )
    return RelayError("credential_invalid", str(exc))
