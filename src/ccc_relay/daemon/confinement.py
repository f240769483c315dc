"""Start-up step 5's confinement: Landlock to the relay's own dirs, then the self-check."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ccc_relay.daemon.landlock import LandlockStatus, restrict_to
from ccc_relay.policy.config import Config

log = logging.getLogger("ccc_relay.daemon")

# Directories that are never confined-to as a whole: the admin socket's parent
# is added to the Landlock rules only when it is a directory of the relay's own.
_SHARED_RUNTIME_DIRS = frozenset({Path("/run"), Path("/var/run"), Path("/tmp"), Path("/")})  # noqa: S108
CONFINEMENT_PROBE = Path("/etc/hostname")  # must be unreadable once confined


def confine(config: Config) -> tuple[LandlockStatus, dict[str, Any]]:
    """Landlock: read-write only in the state, log and admin-socket dirs.

    Returns the status and the sandbox report ``ccc status`` shows.
    """
    writable = [config.state_dir, config.audit.log_path]
    if config.per_agent_sockets and config.agent_sockets not in writable:
        writable.append(config.agent_sockets)  # sockets of agents added later
    admin_dir = config.admin_socket_path.parent
    if admin_dir not in _SHARED_RUNTIME_DIRS and admin_dir not in writable:
        writable.append(admin_dir)
    # The config file stays readable so that a reload (SIGHUP) still works.
    readable = [config.source] if config.source is not None else []
    status = restrict_to(writable, readable)
    sandbox = {
        "landlock": status.message,
        "abi": status.abi,
        "writable": [str(p) for p in writable],
    }
    return status, sandbox


def check_confinement(status: LandlockStatus, sandbox: dict[str, Any]) -> None:
    """When enforced, prove it: opening ``CONFINEMENT_PROBE`` must fail (noted in ``sandbox``).

    Raises RuntimeError when the probe opens; logs the status otherwise.
    """
    if status.enforced:
        try:
            CONFINEMENT_PROBE.open("rb").close()
        except PermissionError:
            sandbox["probe"] = f"open({CONFINEMENT_PROBE}) denied"
        except OSError as exc:
            sandbox["probe"] = f"open({CONFINEMENT_PROBE}) failed: {exc.strerror}"
        else:
            raise RuntimeError(f"Landlock reported enforced but {CONFINEMENT_PROBE} opened")
    log.info("%s", status.message)
