"""The operator's client for the admin socket (owner-only, on the relay's host)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import msgspec

from ccc_relay.client.base import RelayError, RelayUnavailable
from ccc_relay.client.errors import SocketPermissionDenied

MAX_REPLY = 64 * 1024 * 1024  # status of thousands of agents still fits


class AdminClient:
    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def request(self, op: str, **args: Any) -> Any:
        """Send one admin request; return its data.

        Raises RelayUnavailable when no daemon answers, RelayError for a refusal.
        """
        payload = msgspec.json.encode(
            {"op": op, **{k: v for k, v in args.items() if v is not None}}
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise RelayUnavailable(
                    f"no relay is running (admin socket {self.path}); start it with "
                    "'ccc-statusd start'"
                ) from None
            except PermissionError:
                raise SocketPermissionDenied(
                    f"permission denied on {self.path}: administration is for the relay's own "
                    "user (run this as that user, or with sudo -u)"
                ) from None
            sock.sendall(payload + b"\n")
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_REPLY:
                    raise RelayError("invalid", "admin reply too large")
        except TimeoutError:
            raise RelayUnavailable(f"the relay did not answer within {self.timeout:g}s") from None
        except OSError as exc:
            raise RelayUnavailable(f"the connection to the relay broke: {exc}") from None
        finally:
            sock.close()
        if not data:
            raise RelayUnavailable("the relay closed the admin connection without an answer")
        reply = msgspec.json.decode(bytes(data))
        if reply.get("type") == "error":
            raise RelayError(reply.get("code", "internal"), reply.get("message", ""))
        return reply.get("data")
