"""Pair keys, and where direct mode keeps its files.

The rule: a pair key is 256 random bits shared by exactly two agents, written
once with mode 0600 and never through a symlink, and read only from a regular
file that is not open to everyone. ``PairKey`` masks itself in every repr.

Where things live (flags win over the environment, the environment over the
defaults under the state dir ``$CCC_CACHE_DIR`` -- see
``policy.config.default_state_dir``):

* pair keys: ``CCC_PEER_KEY`` (files or directories, ``:``-separated), else
  ``<state>/peer/keys/<a>+<b>.key`` (names sorted);
* the shared socket dir (mode 0770, mounted into both containers):
  ``CCC_PEER_DIR``, else ``<state>/peer/shared``; a listener ``NAME`` binds
  ``<dir>/NAME.sock``;
* this agent's name: ``CCC_PEER_NAME``, else the agent of the credential file
  in ``CCC_CREDENTIAL``;
* this agent's private store (inbox, seq high-water marks):
  ``<state>/peer/inbox/<name>.db`` -- never in the shared dir.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ccc_relay.credentials import (
    CREDENTIAL_BYTES,
    PREFIX,
    CredentialError,
    read_credential_file,
    secret_file_fields,
    write_secret_file,
)
from ccc_relay.policy.config import DEFAULT_MAX_MESSAGE_SIZE, ConfigError, default_state_dir
from ccc_relay.protocol.names import agent_name_problem

KEY_BYTES = CREDENTIAL_BYTES  # 256 bits, as the issue asks
MAX_KEY_FILE = 4096
KEY_SUFFIX = ".key"
ENV_DIR = "CCC_PEER_DIR"
ENV_KEY = "CCC_PEER_KEY"
ENV_NAME = "CCC_PEER_NAME"


class PairKeyError(CredentialError):
    """A pair key file that is missing, unsafe or malformed; the message says which."""


class PeerConfigError(ConfigError):
    """Direct mode is not set up well enough to use; the message says what to fix."""


class PairKey:
    """The secret two agents share. Its text uses the agents' credential prefix
    on purpose: the sanitiser redacts ``ccc1.`` secrets, so a key pasted into a
    message body never reaches a reader."""

    __slots__ = ("_secret", "pair")

    def __init__(self, pair: tuple[str, str], secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise PairKeyError(f"a pair key has {KEY_BYTES} bytes, not {len(secret)}")
        self.pair = tuple(sorted(pair))
        self._secret = secret

    @classmethod
    def generate(cls, a: str, b: str) -> PairKey:
        """Raises PairKeyError for invalid names or a pair of one agent."""
        for name in (a, b):
            problem = agent_name_problem(name)
            if problem:
                raise PairKeyError(f"{name!r} is not an agent name: {problem}")
        if a == b:
            raise PairKeyError("a pair key joins two different agents")
        return cls((a, b), secrets.token_bytes(KEY_BYTES))

    def reveal(self) -> bytes:
        return self._secret

    def text(self) -> str:
        return PREFIX + base64.urlsafe_b64encode(self._secret).rstrip(b"=").decode("ascii")

    def peer_of(self, me: str) -> str:
        """The other agent of the pair. Raises PairKeyError when ``me`` is not in it."""
        a, b = self.pair
        if me not in (a, b):
            raise PairKeyError(f"the pair key of {a} and {b} is not {me}'s")
        return b if me == a else a

    def __repr__(self) -> str:
        return f"PairKey({self.pair[0]}+{self.pair[1]}, '***')"

    __str__ = __repr__


def pair_file_name(a: str, b: str) -> str:
    # "+" cannot occur in an agent name, so the name splits back unambiguously.
    first, second = sorted((a, b))
    return f"{first}+{second}{KEY_SUFFIX}"


def key_file_text(key: PairKey) -> str:
    a, b = key.pair
    return (
        f"# ccc-relay direct-mode pair key of {a} and {b}. Secret: mount it read-only into\n"
        "# these two agents' containers only; whoever holds it can sign as either of them.\n"
        f"pair: {a} {b}\n"
        f"key: {key.text()}\n"
    )


def write_pair_key(path: Path, key: PairKey, *, replace: bool = False) -> None:
    """Write ``key`` to ``path`` with mode 0600, never through a symlink.

    Without ``replace`` an existing file (or symlink) is an error
    (FileExistsError); with it the new key is written beside the old one and
    renamed over it, so a reader sees one whole key. Raises PairKeyError for a
    symlink at ``path`` when replacing.
    """
    write_secret_file(
        path, key_file_text(key), replace=replace, what="a pair key", error=PairKeyError
    )


def read_pair_key(path: str | os.PathLike[str]) -> PairKey:
    """Read a pair key file. Raises PairKeyError with a sentence saying what is wrong."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PairKeyError(f"pair key file {path} does not exist") from None
    except OSError as exc:
        if path.is_symlink():
            raise PairKeyError(f"pair key file {path} is a symlink; not following it") from None
        raise PairKeyError(f"cannot open pair key file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PairKeyError(f"pair key file {path} is not a regular file")
        if info.st_mode & 0o007:
            # Group access stays possible (a container user sharing the host
            # owner's group); everyone-access never is.
            raise PairKeyError(
                f"pair key file {path} is open to every user (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 600 {path}"
            )
        data = os.read(fd, MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE:
        raise PairKeyError(f"pair key file {path} is too large to be a pair key")
    fields = secret_file_fields(data)
    names = fields.get("pair", "").split()
    text = fields.get("key", "")
    secret = _decode_key(text)
    if len(names) != 2 or secret is None or any(agent_name_problem(n) for n in names):
        raise PairKeyError(
            f"pair key file {path} does not hold a pair key (expected 'pair: A B' and 'key:' lines)"
        )
    return PairKey((names[0], names[1]), secret)


def _decode_key(text: str) -> bytes | None:
    if not text.startswith(PREFIX):
        return None
    raw = text[len(PREFIX) :]
    try:
        secret = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        return None
    return secret if len(secret) == KEY_BYTES else None


# --- where things live -------------------------------------------------------


def peer_state_dir(env: Mapping[str, str] | None = None) -> Path:
    return default_state_dir(env).absolute() / "peer"


def default_keys_dir(env: Mapping[str, str] | None = None) -> Path:
    return peer_state_dir(env) / "keys"


def default_peer_dir(env: Mapping[str, str] | None = None) -> Path:
    return peer_state_dir(env) / "shared"


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """Everything direct mode needs, resolved and validated before anything binds."""

    me: str
    peer_dir: Path  # shared with the other containers: sockets only
    keys_dir: Path  # used when key_paths is empty
    key_paths: tuple[Path, ...]  # explicit key files or directories
    store_path: Path  # private: inbox and seq marks
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    @classmethod
    def resolve(
        cls,
        *,
        me: str | None = None,
        credential_file: str | os.PathLike[str] | None = None,
        peer_dir: str | os.PathLike[str] | None = None,
        key_paths: Iterable[str | os.PathLike[str]] = (),
        env: Mapping[str, str] | None = None,
    ) -> PeerConfig:
        """Flags, then ``CCC_PEER_*``, then defaults (see the module docstring).

        Raises PeerConfigError when no agent name can be found or it is invalid,
        and CredentialError for an unreadable credential file.
        """
        env = os.environ if env is None else env
        name = me or env.get(ENV_NAME)
        credential_file = credential_file or env.get("CCC_CREDENTIAL")
        if not name and credential_file:
            name, _ = read_credential_file(credential_file)
        if not name:
            raise PeerConfigError(
                "direct mode does not know this agent's name: pass --as NAME, or set "
                f"{ENV_NAME} (or CCC_CREDENTIAL to the agent's credential file)"
            )
        problem = agent_name_problem(name)
        if problem:
            raise PeerConfigError(f"{name!r} is not an agent name: {problem}")
        paths = tuple(Path(p) for p in key_paths)
        if not paths and env.get(ENV_KEY):
            paths = tuple(Path(p) for p in env[ENV_KEY].split(os.pathsep) if p)
        state = peer_state_dir(env)
        return cls(
            me=name,
            peer_dir=Path(peer_dir or env.get(ENV_DIR) or state / "shared").absolute(),
            keys_dir=state / "keys",
            key_paths=paths,
            store_path=state / "inbox" / f"{name}.db",
        )

    def socket_path(self, agent: str) -> Path:
        return self.peer_dir / f"{agent}.sock"

    def _key_files(self) -> list[tuple[Path, bool]]:
        """(path, named explicitly): a file named on its own must be this agent's."""
        if not self.key_paths:
            # The host's key dir holds every pair's key: open only this agent's.
            mine = sorted(
                p for p in self.keys_dir.glob(f"*+*{KEY_SUFFIX}")
                if self.me in p.name.removesuffix(KEY_SUFFIX).split("+")
            )  # fmt: skip
            return [(p, False) for p in mine]
        files: list[tuple[Path, bool]] = []
        for path in self.key_paths:
            if path.is_dir() and not path.is_symlink():
                files += [(p, False) for p in sorted(path.glob(f"*{KEY_SUFFIX}"))]
            else:
                files.append((path, True))
        return files

    def key_for(self, peer: str) -> PairKey:
        """The key this agent shares with ``peer``. Raises PairKeyError when there is none."""
        if not self.key_paths:
            path = self.keys_dir / pair_file_name(self.me, peer)
            if os.path.lexists(path):
                return read_pair_key(path)
        else:
            for path, _ in self._key_files():
                key = read_pair_key(path)
                if set(key.pair) == {self.me, peer}:
                    return key
        raise PairKeyError(
            f"no pair key for {self.me} and {peer}: create one on the host with "
            f"'ccc peer pair {self.me} {peer}' and give it to both ({ENV_KEY}=FILE)"
        )

    def keys(self) -> dict[str, PairKey]:
        """Every pair key naming this agent, by the other agent's name.

        Raises PairKeyError when there is none, or an explicitly given key
        file is unreadable or belongs to another agent.
        """
        found: dict[str, PairKey] = {}
        for path, explicit in self._key_files():
            key = read_pair_key(path)
            if self.me not in key.pair:
                if explicit:
                    raise PairKeyError(
                        f"pair key file {path} is for {' and '.join(key.pair)}, not for {self.me}"
                    )
                continue
            found[key.peer_of(self.me)] = key
        if not found:
            raise PairKeyError(
                f"no pair key names {self.me}: create one with 'ccc peer pair {self.me} OTHER' "
                f"and point {ENV_KEY} at it"
            )
        return found
