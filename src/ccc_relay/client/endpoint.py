"""Finding the relay and the agent's identity: flags, then environment, then defaults.

Inside a container ``CCC_SOCKET`` and ``CCC_CREDENTIAL`` (a file path) are
set by ``ccc run``. On the host the defaults come from the config
(``--config``/``CCC_CONFIG``) or the embedded defaults, and ``--as NAME``
picks NAME's credential file from the state dir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ccc_relay.credentials import (
    Credential,
    CredentialError,
    NoCredentialGiven,
    read_credential_file,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from ccc_relay.policy.config import Config

PUBKEY_ENV = "CCC_RELAY_PUBKEY"


# A NamedTuple, not a dataclass: Claude Code hooks load this module, and the
# dataclasses module (or msgspec) would cost them more than the rest of their start.
class Endpoint(NamedTuple):
    socket_path: Path
    agent: str
    credential: Credential
    # With the relay's public key the client asks for signed deliveries and
    # refuses unsigned or badly signed messages.
    relay_pubkey: Ed25519PublicKey | None = None

    @classmethod
    def resolve(
        cls,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        credential_file: str | os.PathLike[str] | None = None,
        as_agent: str | None = None,
        config: Config | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Endpoint:
        """Raises CredentialError when no usable credential (or relay key) can be found."""
        env = os.environ if env is None else env
        # The config is read only when something must come from it: inside a
        # container the environment says it all (and a hook stays fast).
        sock_given = socket_path or env.get("CCC_SOCKET")
        if config is None and (not sock_given or (credential_file is None and as_agent)):
            config = host_config(env=env)
        sock = Path(sock_given or config.socket_path)  # type: ignore[union-attr]
        if credential_file is None and as_agent is not None:
            assert config is not None
            credential_file = config.credentials_dir / f"{as_agent}.cred"
        credential_file = credential_file or env.get("CCC_CREDENTIAL")
        if not credential_file:
            raise NoCredentialGiven(
                "no credential: set CCC_CREDENTIAL to the agent's credential file, "
                "or pass --credential FILE (or --as NAME on the relay's host)"
            )
        agent, credential = read_credential_file(credential_file)
        if not env.get(PUBKEY_ENV):
            return cls(sock, agent, credential, None)
        from ccc_relay.client.signatures import public_key_from_env

        try:
            pubkey = public_key_from_env(env)
        except ValueError as exc:
            raise CredentialError(str(exc)) from None
        return cls(sock, agent, credential, pubkey)


def host_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """The config the host's daemon was started with: ``path``, ``$CCC_CONFIG`` or defaults.

    Raises ConfigError for a config file that does not validate.
    """
    from ccc_relay.policy.config import embedded_defaults, load_config

    env = os.environ if env is None else env
    path = path or env.get("CCC_CONFIG")
    return load_config(path, env=env) if path else embedded_defaults(env)
