"""What on this host stops a config from running, found before anything binds.

``ccc-statusd check-config`` prints it and ``ccc-statusd start`` refuses with it
before it binds a socket, so a start that cannot work leaves nothing behind.
Every check takes the view of the account the relay will run as: ``daemon.user``
when started as root (it drops to it after binding), else whoever starts it.
That account must own its directories and reach them (every parent searchable),
and must read the Python it runs on: after the drop the interpreter still loads
modules lazily, and a venv made with a python under /root (pyenv's) links to
files the relay's user may not open.

Access is tested by the kernel, not by reading mode bits: as root, a forked
child takes the account's ids and asks ``access(2)``, so ACLs and the like count.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from ccc_relay.daemon.privileges import (
    PrivilegeError,
    describe_missing,
    group_ids,
    root_check,
    sudo,
)
from ccc_relay.policy.config import Config

# Where a relay's own directories go when the file's choice cannot work.
SUGGESTED_DIRS = {
    "daemon.state_dir": "/var/lib/ccc-statusd",
    "daemon.audit.log_path": "/var/log/claude-ipc",
}
# Homes of people (root's and login users'): the relay's user must never be given
# anything in one, and cannot walk into root's (0700) anyway.
FIRST_LOGIN_UID = 1000


@dataclass(frozen=True, slots=True)
class Account:
    """The identity the relay runs with once started."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DirectoryState:
    """One directory the relay needs: what it is for, and how it stands."""

    key: str  # the config key that names it
    path: Path
    state: str  # a sentence: how it is, or what is wrong and the fix
    problem: bool


def run_account(config: Config, *, euid: int | None = None) -> Account:
    """The account the relay will run as.

    Root with ``daemon.user``: that user, with its groups and the socket group
    (the drop keeps it). Anyone else: this process's own ids.

    Raises PrivilegeError when the user or the group does not exist, or the user
    is in root's group.
    """
    euid = os.geteuid() if euid is None else euid
    if euid == 0 and config.user is not None:
        try:
            entry = _passwd(config.user)
        except KeyError:
            raise PrivilegeError(f"user {config.user!r} does not exist") from None
        groups = group_ids(entry, config.socket_group)
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(groups))
    try:
        name = pwd.getpwuid(euid).pw_name
    except KeyError:
        name = str(euid)
    return Account(name, euid, os.getegid(), tuple(sorted({os.getegid(), *os.getgroups()})))


def check_host(
    config: Config, *, allow_root: bool = True, socket_activated: bool = False
) -> tuple[list[DirectoryState], list[str]]:
    """The directories ``config`` needs, and what on this host stops it from
    running, each problem with how to fix it.

    Checks the user and group, running as root, the directories (see
    ``directory_states``; none when the user does not exist) and, when root
    will drop to ``daemon.user``, that the user can run this Python. Raises nothing.
    """
    problems = describe_missing(config.user, config.socket_group)
    try:
        root_check(config.user, allow_root)
        account = run_account(config)
    except PrivilegeError as exc:
        return [], problems or [str(exc)]
    directories = directory_states(config, account, socket_activated=socket_activated)
    problems += [d.state for d in directories if d.problem]
    if _drops_to(account):
        problems += interpreter_problems(account)
    return directories, problems


def socket_activated() -> bool:
    """Whether systemd passed this process its listening socket. Raises nothing."""
    return os.environ.get("LISTEN_PID") == str(os.getpid()) and bool(os.environ.get("LISTEN_FDS"))


def directory_states(
    config: Config, account: Account, *, socket_activated: bool = False
) -> list[DirectoryState]:
    """The state and audit log directories, and the sockets' directories when a
    file places them apart, each with its state for ``account``.

    ``socket_activated``: systemd hands the agents' socket over, so nobody binds
    it. Raises nothing.
    """
    creator_is_root = os.geteuid() == 0
    states = [
        _private_dir("daemon.state_dir", config.state_dir, account, creator_is_root),
        _private_dir("daemon.audit.log_path", config.audit.log_path, account, creator_is_root),
    ]
    made = (config.state_dir, config.audit.log_path)
    admin_dir = config.admin_socket_path.parent
    if not _within(admin_dir, made):
        states.append(_admin_dir(admin_dir, account, creator_is_root))
    socket_dir = config.socket_path.parent
    if not _within(socket_dir, (*made, admin_dir)):
        binds_as_account = not creator_is_root and not socket_activated
        states.append(_socket_dir(socket_dir, account, binds_as_account))
    return states


def prepare_admin_dir(config: Config, account: Account) -> None:
    """Create the admin socket's directory when it is missing, mode 0700, owned by
    ``account``, as systemd's ``RuntimeDirectory=`` would (``/run`` empties at boot).

    Raises OSError when it cannot be made.
    """
    path = config.admin_socket_path.parent
    if os.path.lexists(path) or not path.parent.is_dir():
        return
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        # Through a descriptor of the directory just made, never the name again:
        # a symlink swapped in meanwhile is refused, not followed by root's chown.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, account.uid, account.gid)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)


def interpreter_problems(account: Account) -> list[str]:
    """Why ``account`` could not go on running this Python after the drop, or nothing.

    The interpreter (where a venv's ``python3`` links to) and every entry of
    ``sys.path`` must be reachable and readable. Raises nothing.
    """
    exe = sys.executable
    real = os.path.realpath(exe)
    entries = [os.path.realpath(p or ".") for p in sys.path]
    entries = [p for p in dict.fromkeys(entries) if os.path.exists(p)]
    checks = [(real, os.X_OK), *((p, os.R_OK | _search(p)) for p in entries)]
    blockers = _blockers(account, checks)
    if blockers[0] is not None:
        return [_interpreter_sentence(account, exe, real, blockers[0])]
    for entry, blocker in zip(entries, blockers[1:], strict=True):
        if blocker is not None:
            return [
                f"the relay's user {account.name} cannot read {entry}, where Python finds "
                f"the relay's modules: {_closed(blocker)} to it; {_reinstall(exe)}"
            ]
    return []


# --- directories ------------------------------------------------------------


def _private_dir(key: str, path: Path, account: Account, creator_is_root: bool) -> DirectoryState:
    """A directory of the relay's own (0700), made at start when missing."""

    def problem(sentence: str) -> DirectoryState:
        return DirectoryState(key, path, f"{key} {path}: {sentence}", True)

    suggestion = SUGGESTED_DIRS[key]
    elsewhere = f"set {key} to a directory of the relay's own, e.g. {suggestion}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        return problem(f"a symlink, and the relay uses only a real directory; {elsewhere}")
    if info is not None and not stat.S_ISDIR(info.st_mode):
        return problem(f"not a directory; {elsewhere}")
    home = _home_of_another(path, account)
    parent = path.parent if info is not None else _nearest_existing(path)
    blocker = _blockers(account, [(str(parent), os.X_OK)])[0]
    if blocker is not None:
        where = f" (it lies in {home})" if home else ""
        return problem(
            f"the relay's user {account.name} cannot reach it{where}: "
            f"{_closed(blocker)} to {account.name}; {elsewhere}"
        )
    if info is None:
        if not creator_is_root and _blockers(account, [(str(parent), os.W_OK)])[0] is not None:
            return problem(
                f"does not exist, and {account.name} may not create it in {parent}; "
                f"create it with: {_install_dir(path, account)}"
            )
        return DirectoryState(
            key, path, f"created at start (owner {account.name}, mode 0700)", False
        )
    if info.st_uid != account.uid:
        owner = _user_name(info.st_uid)
        if home:
            # Never hand a home's contents (root's credentials, a developer's
            # state) to the relay's user: the state belongs elsewhere.
            return problem(
                f"lies in {home} and belongs to {owner}; the relay's user "
                f"{account.name} must not own anything in a home: {elsewhere}"
            )
        return problem(
            f"belongs to {owner}, not to {account.name} that the relay runs as; "
            f"fix it with: {sudo()}chown -R {account.name}: {path}"
        )
    if info.st_mode & 0o022:
        return problem(
            f"writable by others than {account.name} (mode {stat.S_IMODE(info.st_mode):04o}), "
            f"so anything in it may have been planted; check what it holds, then fix it "
            f"with: chmod 700 {path}"
        )
    return DirectoryState(key, path, f"ok (owner {account.name})", False)


def _admin_dir(path: Path, account: Account, creator_is_root: bool) -> DirectoryState:
    key = "daemon.admin_socket_path"
    if path.is_dir() and not creator_is_root:
        blocker = _blockers(account, [(str(path), os.W_OK | os.X_OK)])[0]
        if blocker is not None:
            return DirectoryState(
                key,
                path,
                f"{key}: {account.name} may not create its admin socket in "
                f"{_described(blocker) if blocker == str(path) else _closed(blocker)}; "
                f"set {key} in a directory of its own, e.g. /run/ccc-statusd/admin.sock "
                f"made with: {_install_dir(Path('/run/ccc-statusd'), account)}",
                True,
            )
    if path.is_dir():
        return DirectoryState(key, path, "ok", False)
    parent = path.parent
    if creator_is_root and parent.is_dir():
        return DirectoryState(
            key, path, f"created at start (owner {account.name}, mode 0700)", False
        )
    if parent.is_dir() and _blockers(account, [(str(parent), os.W_OK | os.X_OK)])[0] is None:
        return DirectoryState(key, path, "created at start (mode 0700)", False)
    return DirectoryState(
        key,
        path,
        f"{key}: its directory {path} does not exist; create it with: "
        f"{_install_dir(path, account)}",
        True,
    )


def _socket_dir(path: Path, account: Account, binds_as_account: bool) -> DirectoryState:
    key = "daemon.socket_path"
    if path.is_dir() and binds_as_account:
        blocker = _blockers(account, [(str(path), os.W_OK | os.X_OK)])[0]
        if blocker is not None:
            return DirectoryState(
                key,
                path,
                f"{key}: {account.name} may not create its socket in "
                f"{_described(blocker) if blocker == str(path) else _closed(blocker)}; "
                "start the relay as root, which binds the socket "
                "and then becomes daemon.user, or under systemd with "
                "packaging/systemd/ccc-statusd.socket, which hands the socket over",
                True,
            )
    if path.is_dir():
        return DirectoryState(key, path, "ok", False)
    return DirectoryState(
        key,
        path,
        f"{key}: its directory {path} does not exist; create it with: {sudo()}mkdir -p "
        f"-m 0755 {path} (the agents must be able to reach the socket in it)",
        True,
    )


def _install_dir(path: Path, account: Account) -> str:
    group = _group_name(account.gid)
    return f"{sudo()}install -d -o {account.name} -g {group} -m 0700 {path}"


def _nearest_existing(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path("/")


def _within(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _home_of_another(path: Path, account: Account) -> str | None:
    """``"the home of NAME (DIR)"`` when ``path`` lies in a person's home that is
    not ``account``'s, else None. Raises nothing."""
    for entry in pwd.getpwall():
        home = Path(entry.pw_dir)
        if entry.pw_uid == account.uid or home == Path("/") or not home.is_absolute():
            continue
        if entry.pw_uid != 0 and entry.pw_uid < FIRST_LOGIN_UID:
            continue  # system accounts' "homes" are /usr/sbin, /var/www, ...
        if path == home or home in path.parents:
            return f"the home of {entry.pw_name} ({home})"
    return None


# --- access as another account ------------------------------------------------


def _drops_to(account: Account) -> bool:
    return os.geteuid() == 0 and account.uid != 0


def _search(path: str) -> int:
    return os.X_OK if os.path.isdir(path) else 0


def _blockers(account: Account, checks: list[tuple[str, int]]) -> list[str | None]:
    """For each (path, mode): the first of its parents ``account`` may not search,
    or the path itself when ``mode`` is refused on it, or None. Raises nothing."""
    if account.uid == os.geteuid() or os.geteuid() != 0:
        return [_first_refused(path, mode) for path, mode in checks]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the account, ask, report, exit
        status = 1
        try:
            os.close(read)
            os.setgroups(list(account.groups))
            os.setresgid(account.gid, account.gid, account.gid)
            os.setresuid(account.uid, account.uid, account.uid)
            answer = "\0".join(_first_refused(p, m) or "" for p, m in checks)
            with os.fdopen(write, "wb") as out:
                out.write(answer.encode("utf-8", "surrogateescape"))
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as answer_in:
        answer = answer_in.read().decode("utf-8", "surrogateescape")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return [None] * len(checks)  # no answer: nothing to report, start will tell
    return [part or None for part in answer.split("\0")]


def _first_refused(path: str, mode: int) -> str | None:
    target = Path(path)
    for parent in reversed(target.parents):
        if not os.access(parent, os.X_OK):
            return str(parent)
    if not os.access(target, mode or os.F_OK):
        return str(target)
    return None


def _closed(blocker: str) -> str:
    """``"/root (owner root, mode 0700) is closed"``. Raises nothing."""
    return f"{_described(blocker)} is closed"


def _described(path: str) -> str:
    """``"/root (owner root, mode 0700)"``. Raises nothing."""
    try:
        info = os.stat(path)
    except OSError:
        return path
    return f"{path} (owner {_user_name(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o})"


def _interpreter_sentence(account: Account, exe: str, real: str, blocker: str) -> str:
    link = f": it links to {real}, and " if real != exe else ": "
    return (
        f"the relay's user {account.name} cannot run {exe}{link}{_closed(blocker)} to "
        f"{account.name}; {_reinstall(exe)}"
    )


def _reinstall(exe: str) -> str:
    if sys.prefix != sys.base_prefix:  # a venv: make it again with the system's python
        return (
            f"make the venv with /usr/bin/python3 ({sudo()}/usr/bin/python3 -m venv --clear "
            f"{sys.prefix}) and install ccc-relay into it again"
        )
    return (
        "install ccc-relay where every user may read it: a venv made with /usr/bin/python3, "
        f"e.g. {sudo()}/usr/bin/python3 -m venv /opt/ccc-relay (docs/deploy.md, section 2)"
    )


def _passwd(user: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            return pwd.getpwuid(int(user))
        raise


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
