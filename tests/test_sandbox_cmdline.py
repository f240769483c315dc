"""Sandbox command lines: golden files, the spec's refusals, runtime and uid choice, the CLI.

Nothing here starts a sandbox (tests/test_bwrap_sandbox.py does); the
command lines are compared with tests/golden/*.argv, one argument a line.
CCC_UPDATE_GOLDEN=1 rewrites those files.
"""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccc_relay.cli import containers_cmd
from ccc_relay.cli.containers_cmd import agent_socket, run
from ccc_relay.containers.bwrap import CREDENTIAL_FD, SECCOMP_FD, bwrap_command
from ccc_relay.containers.detect import (
    HostError,
    Identity,
    access_problem,
    capped_ulimits,
    choose_identity,
    detect_runtime,
    missing_tools,
)
from ccc_relay.containers.engines import docker_command, podman_command
from ccc_relay.containers.sandbox import launch_command, print_line, seccomp_command
from ccc_relay.containers.spec import ETC_FILES, SandboxSpec, SandboxSpecError
from ccc_relay.containers.staging import (
    LaunchError,
    open_credential,
    prepare_podman_rootfs,
    private_dir,
    stage_credential,
)
from ccc_relay.policy.config import embedded_defaults

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("CCC_UPDATE_GOLDEN") == "1"

SPEC = SandboxSpec(
    agent="alice",
    project_dir=Path("/home/alice/src/shop-api"),
    socket_path=Path("/var/run/claude-ipc.sock"),
    credential_path=Path("/var/lib/ccc-status/credentials/alice.cred"),
    uid=1001,
    gid=1001,
    extra_gids=(2001,),
    command=("claude", "--model", "opus"),
    env=(("TERM", "xterm-256color"),),
)
ROOTFS = Path("/var/lib/ccc-status/podman-rootfs")
# The agent's own socket, alone in its directory (daemon.per_agent_sockets).
OWN = replace(SPEC, socket_path=Path("/run/ccc-statusd/agents/alice/relay.sock"), socket_dir=True)


def _golden_cases() -> dict[str, Callable[[], list[str]]]:
    return {
        "bwrap": lambda: bwrap_command(SPEC),
        "bwrap-launch-root": lambda: launch_command(SPEC, as_root=True),
        "bwrap-launch-user": lambda: launch_command(
            replace(SPEC, extra_gids=(), pids_limit=None, memory_limit=None), as_root=False
        ),
        "podman": lambda: podman_command(replace(SPEC, runtime="podman"), ROOTFS),
        "podman-rootless-egress": lambda: launch_command(
            replace(SPEC, runtime="podman", network="egress", tty=True),
            as_root=False,
            rootfs_dir=ROOTFS,
            ulimits=(1024, 4096),
        ),
        "docker": lambda: docker_command(replace(SPEC, runtime="docker", image="ccc-agent:1")),
        "bwrap-own-socket": lambda: bwrap_command(OWN),
        "podman-own-socket": lambda: podman_command(replace(OWN, runtime="podman"), ROOTFS),
        "docker-own-socket": lambda: docker_command(
            replace(OWN, runtime="docker", image="ccc-agent:1")
        ),
        "docker-egress": lambda: docker_command(
            replace(SPEC, runtime="docker", image="ccc-agent:1", network="egress", command=())
        ),
    }


@pytest.mark.parametrize("name", sorted(_golden_cases()))
def test_command_line_matches_golden_file(name: str) -> None:
    argv = _golden_cases()[name]()
    path = GOLDEN / f"{name}.argv"
    text = "\n".join(argv) + "\n"
    if UPDATE_GOLDEN:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; CCC_UPDATE_GOLDEN=1 rewrites it"


# --- what the bwrap line grants ------------------------------------------------------


def _binds(argv: list[str]) -> dict[str, tuple[str, str]]:
    """Mount target -> (option, source) for every host bind in a bwrap argv."""
    found = {}
    for i, arg in enumerate(argv):
        if arg in ("--bind", "--ro-bind", "--ro-bind-try", "--dev-bind", "--bind-try"):
            found[argv[i + 2]] = (arg, argv[i + 1])
    return found


def test_bwrap_mounts_only_project_socket_usr_and_named_etc_files() -> None:
    binds = _binds(bwrap_command(SPEC))
    assert binds.pop("/workspace") == ("--bind", str(SPEC.project_dir))
    assert binds.pop("/run/ccc.sock") == ("--ro-bind", str(SPEC.socket_path))
    assert binds.pop("/usr") == ("--ro-bind", "/usr")
    assert binds == {path: ("--ro-bind-try", path) for path in ETC_FILES}
    assert "/etc" not in binds
    assert all(p.startswith("/etc/") for p in binds)


def test_bwrap_credential_comes_from_a_descriptor_read_only() -> None:
    argv = bwrap_command(SPEC, credential_fd=7)
    i = argv.index("--ro-bind-data")
    assert argv[i - 2 : i + 3] == ["--perms", "0400", "--ro-bind-data", "7", "/run/ccc/credential"]
    assert str(SPEC.credential_path) not in argv


def test_bwrap_isolates_namespaces_and_privileges() -> None:
    argv = bwrap_command(SPEC)
    options = argv[: argv.index("--")]
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
    ):
        assert flag in options
    assert options[options.index("--cap-drop") + 1] == "ALL"
    assert "--share-net" not in options
    # The root is made read-only after the last mount point is created.
    mounts = [i for i, a in enumerate(options) if a in ("--bind", "--ro-bind", "--ro-bind-data")]
    remounts = {options[i + 1]: i for i, a in enumerate(options) if a == "--remount-ro"}
    assert remounts["/"] > max(mounts)


def test_bwrap_caps_every_writable_tmpfs_and_loads_the_seccomp_program() -> None:
    spec = replace(SPEC, tmp_size=3 * 1024**2, shm_size=2 * 1024**2)
    options = bwrap_command(spec, seccomp_fd=9)
    options = options[: options.index("--")]
    tmpfs = {options[i + 1]: options[i - 1] for i, a in enumerate(options) if a == "--tmpfs"}
    assert tmpfs == {"/dev/shm": str(2 * 1024**2), "/tmp": str(3 * 1024**2)}
    assert all(options[i - 2] == "--size" for i, a in enumerate(options) if a == "--tmpfs")
    # bubblewrap's /dev is a tmpfs of the sandbox uid without a size: read-only
    # once /dev/shm is mounted on it.
    remounts = [options[i + 1] for i, a in enumerate(options) if a == "--remount-ro"]
    assert remounts == ["/dev", "/"]
    assert options.index("--remount-ro") > options.index("/dev/shm") > options.index("--dev")
    assert options[options.index("--seccomp") + 1] == "9"


def test_engines_cap_tmp_and_dev_shm() -> None:
    spec = replace(SPEC, tmp_size=3 * 1024**2, shm_size=2 * 1024**2)
    for argv in (
        podman_command(replace(spec, runtime="podman"), ROOTFS),
        docker_command(replace(spec, runtime="docker", image="x")),
    ):
        assert argv[argv.index("--shm-size") + 1] == str(2 * 1024**2)
        assert f"size={3 * 1024**2}" in argv[argv.index("--tmpfs") + 1]


def test_bwrap_environment_is_exactly_the_sandbox_one() -> None:
    argv = bwrap_command(SPEC)
    assert argv.index("--clearenv") < argv.index("--setenv")
    env = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/workspace",
        "LANG": "C.UTF-8",
        "CCC_AGENT": "alice",
        "CCC_SOCKET": "/run/ccc.sock",
        "CCC_CREDENTIAL": "/run/ccc/credential",
        "TERM": "xterm-256color",
    }


def test_root_launch_drops_to_the_uid_and_keeps_the_death_signal() -> None:
    argv = launch_command(SPEC, as_root=True)
    assert argv[:7] == [
        "setpriv",
        "--reuid=1001",
        "--regid=1001",
        "--groups=2001",
        "--no-new-privs",
        "--pdeathsig=KILL",
        "--",
    ]
    # setpriv --reuid clears the parent-death signal; it must be set after it.
    assert argv.index("--pdeathsig=KILL") > argv.index("--reuid=1001")
    assert argv[7:11] == [
        "prlimit",
        "--nproc=4096:4096",
        f"--data={4 * 1024**3}:{4 * 1024**3}",
        "--",
    ]
    assert argv[11] == "bwrap"


def test_root_launch_without_extra_groups_clears_them() -> None:
    argv = launch_command(replace(SPEC, extra_gids=()), as_root=True)
    assert "--clear-groups" in argv[: argv.index("bwrap")]


def test_non_root_launch_has_no_setpriv() -> None:
    assert "setpriv" not in launch_command(SPEC, as_root=False)


def test_print_line_is_the_argv_plus_the_credential_and_seccomp_redirects() -> None:
    argv = launch_command(SPEC, as_root=True)
    line = print_line(SPEC, argv)
    credential = f"{CREDENTIAL_FD}< {shlex.quote(str(SPEC.credential_path))}"
    seccomp = f"{SECCOMP_FD}< <({shlex.join(seccomp_command())})"
    assert line == f"{shlex.join(argv)} {credential} {seccomp}"


def test_print_line_quotes_awkward_paths() -> None:
    spec = replace(SPEC, project_dir=Path("/home/al ice/it's; rm -rf ~"))
    argv = bwrap_command(spec)
    assert shlex.split(print_line(spec, argv))[: len(argv)] == argv


# --- podman and docker -------------------------------------------------------------


def test_podman_takes_every_option_before_rootfs() -> None:
    argv = podman_command(replace(SPEC, runtime="podman"), ROOTFS)
    i = argv.index("--rootfs")
    assert argv[i + 1] == str(ROOTFS)
    assert argv[i + 2 :] == ["claude", "--model", "opus"]
    assert argv[1:4] == ["--runtime", "runc", "run"]


def test_podman_and_docker_harden_the_container() -> None:
    for argv in (
        podman_command(replace(SPEC, runtime="podman"), ROOTFS),
        docker_command(replace(SPEC, runtime="docker", image="img")),
    ):
        joined = " ".join(argv)
        for piece in (
            "--read-only",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
            "--network none",
            "--ipc private",
            "--user 1001:1001",
            "--group-add 2001",
            "--pids-limit 4096",
            "--rm",
        ):
            assert piece in joined, piece
        assert f"--memory {4 * 1024**3} --memory-swap {4 * 1024**3}" in joined
        assert "source=/var/lib/ccc-status/credentials/alice.cred" in joined


def test_egress_joins_the_guarded_network() -> None:
    argv = docker_command(replace(SPEC, runtime="docker", image="img", network="egress"))
    assert argv[argv.index("--network") + 1] == "ccc-egress"


def test_podman_ulimits_stay_under_the_hard_limits() -> None:
    nofile, nproc = capped_ulimits()
    for limit, value in ((resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_NPROC, nproc)):
        hard = resource.getrlimit(limit)[1]
        assert hard == resource.RLIM_INFINITY or value <= hard
    assert nofile <= 20000
    assert nproc <= 32768


# --- the spec's refusals ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uid": 0}, "non-root"),
        ({"gid": 0}, "non-root"),
        ({"extra_gids": (0,)}, "non-root group"),
        ({"agent": "../bob"}, "agent"),
        ({"agent": "root"}, "reserved"),
        ({"project_dir": Path("src/x")}, "absolute"),
        ({"network": "host"}, "unknown network"),
        ({"network": "egress"}, "bubblewrap can only share"),
        ({"runtime": "lxc"}, "unknown runtime"),
        ({"runtime": "docker"}, "docker needs an image"),
        ({"runtime": "podman", "project_dir": Path("/src/a,b")}, "cannot carry"),
        ({"env": (("HOME", "/root"),)}, "cannot be overridden"),
        ({"env": (("CCC_SOCKET", "/x"),)}, "cannot be overridden"),
        ({"env": (("A=B", "x"),)}, "not a usable"),
        ({"pids_limit": 0}, "positive"),
    ],
)
def test_spec_refuses(change: dict[str, object], message: str) -> None:
    with pytest.raises(SandboxSpecError, match=message):
        replace(SPEC, **change)  # type: ignore[arg-type]


def test_hostname_fits_the_kernel_limit() -> None:
    spec = replace(SPEC, agent="a" * 64)
    assert len(spec.hostname) <= 63
    assert replace(SPEC, agent="web_ui.v2").hostname == "ccc-web-ui-v2"


# --- runtime detection ---------------------------------------------------------------


def _which(*present: str) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in present else None


def test_bwrap_is_preferred_when_installed() -> None:
    which = _which("bwrap", "prlimit", "setpriv", "podman", "runc", "docker")
    assert detect_runtime(None, as_root=True, which=which) == "bwrap"


def test_podman_then_docker_are_fallbacks() -> None:
    assert detect_runtime(None, as_root=False, which=_which("podman", "runc", "docker")) == "podman"
    assert detect_runtime(None, as_root=False, which=_which("podman", "docker")) == "docker"


def test_root_needs_setpriv_for_bwrap() -> None:
    assert missing_tools("bwrap", as_root=True, which=_which("bwrap", "prlimit")) == [
        "setpriv (apt-get install util-linux)"
    ]
    assert missing_tools("bwrap", as_root=False, which=_which("bwrap", "prlimit")) == []


def test_missing_requested_runtime_says_what_to_install() -> None:
    with pytest.raises(HostError, match="apt-get install bubblewrap"):
        detect_runtime("bwrap", as_root=False, which=_which())
    with pytest.raises(HostError, match="apt-get install runc"):
        detect_runtime("podman", as_root=False, which=_which("podman"))


def test_no_runtime_at_all_is_a_clear_error() -> None:
    with pytest.raises(HostError, match="apt-get install bubblewrap"):
        detect_runtime(None, as_root=False, which=_which())


def test_egress_looks_only_at_the_engines(host: dict[str, Path]) -> None:
    both = _which("bwrap", "prlimit", "setpriv", "docker")
    assert (
        detect_runtime(None, as_root=True, candidates=("podman", "docker"), which=both) == "docker"
    )
    with pytest.raises(HostError, match="podman and runc"):
        detect_runtime(None, as_root=True, candidates=("podman", "docker"), which=_which("bwrap"))
    code, out = _invoke(
        "alice",
        "--project",
        str(host["project"]),
        "--network",
        "egress",
        "--print",
        "--config",
        str(host["config"]),
    )
    if code == 0:
        assert "--network ccc-egress" in out
    else:
        assert "podman and runc" in out


# --- whose uid ---------------------------------------------------------------------


def _stat(uid: int, gid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


PROJECT = _stat(1001, 1001, stat.S_IFDIR | 0o755)


def test_root_runs_the_sandbox_as_the_project_owner() -> None:
    ident = choose_identity(euid=0, project=PROJECT, primary_gid=lambda uid: 1500)
    assert ident == Identity(1001, 1500)


def test_root_falls_back_to_the_uid_as_gid_without_a_passwd_entry() -> None:
    assert choose_identity(euid=0, project=PROJECT, primary_gid=lambda uid: None).gid == 1001


def test_root_owned_project_needs_an_explicit_uid() -> None:
    with pytest.raises(HostError, match="pass --uid"):
        choose_identity(euid=0, project=_stat(0, 0, stat.S_IFDIR | 0o755))
    ident = choose_identity(euid=0, project=_stat(0, 0, 0o40755), uid=4000, gid=4000)
    assert ident == Identity(4000, 4000)


def test_socket_group_is_joined_when_it_is_group_read_write() -> None:
    sock = _stat(999, 2500, stat.S_IFSOCK | 0o660)
    ident = choose_identity(euid=0, project=PROJECT, gid=1001, groups=[3000], socket=sock)
    assert ident.extra_gids == (3000, 2500)


@pytest.mark.parametrize(
    "sock",
    [
        _stat(999, 2500, stat.S_IFSOCK | 0o600),  # not for the group
        _stat(999, 0, stat.S_IFSOCK | 0o660),  # group root is never handed out
        _stat(1001, 2500, stat.S_IFSOCK | 0o660),  # the sandbox uid owns it already
    ],
)
def test_socket_group_is_not_joined_otherwise(sock: os.stat_result) -> None:
    assert choose_identity(euid=0, project=PROJECT, gid=1001, socket=sock).extra_gids == ()


def test_non_root_runs_as_itself_and_cannot_choose() -> None:
    ident = choose_identity(euid=1000, project=PROJECT, current=(1000, 1000))
    assert ident == Identity(1000, 1000)
    with pytest.raises(HostError, match="only root"):
        choose_identity(euid=1000, project=PROJECT, uid=1001, current=(1000, 1000))
    with pytest.raises(HostError, match="only root"):
        choose_identity(euid=1000, project=PROJECT, groups=[5], current=(1000, 1000))


def test_group_zero_is_refused() -> None:
    with pytest.raises(HostError, match="group 0"):
        choose_identity(euid=0, project=PROJECT, groups=[0])


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to another uid needs root")
def test_access_problem_reports_an_unsearchable_parent(host: dict[str, Path]) -> None:
    locked = host["tmp"] / "locked"
    project = locked / "project"
    project.mkdir(parents=True)
    os.chown(project, 4321, 4321)
    ident = Identity(4321, 4321)
    assert access_problem(project, ident, 7, traverse=True) is None
    locked.chmod(0o700)
    problem = access_problem(project, ident, 7, traverse=True)
    assert problem is not None
    assert f"no search permission on {locked} " in problem
    # An engine mounting as root only needs the final inode.
    assert access_problem(project, ident, 7, traverse=False) is None


# --- host preparation --------------------------------------------------------------


def test_podman_rootfs_skeleton_holds_only_mount_points(tmp_path: Path) -> None:
    root = prepare_podman_rootfs(tmp_path / "rootfs", etc_files=["/etc/passwd", "/etc/ssl/certs"])
    prepare_podman_rootfs(root, etc_files=["/etc/passwd", "/etc/ssl/certs"])  # idempotent
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(root / "bin") == "usr/bin"
    assert (root / "etc/passwd").stat().st_size == 0
    assert (root / "etc/ssl/certs").is_dir()
    # /run/ccc.sock leads (inside the skeleton) to where the socket or its
    # directory is mounted.
    assert os.readlink(root / "run/ccc.sock") == "ccc-relay/relay.sock"
    assert (root / "run/ccc-relay/relay.sock").is_file()
    assert (root / "run/ccc/credential").exists()
    assert not any(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_podman_rootfs_of_the_older_layout_gets_the_socket_link(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "run").mkdir(parents=True)
    (root / "run/ccc.sock").touch()  # the mount point of a socket file
    prepare_podman_rootfs(root, etc_files=[])
    assert os.readlink(root / "run/ccc.sock") == "ccc-relay/relay.sock"


def test_an_agents_own_socket_comes_with_its_directory() -> None:
    own = {
        "bwrap": bwrap_command(OWN),
        "podman": podman_command(replace(OWN, runtime="podman"), ROOTFS),
        "docker": docker_command(replace(OWN, runtime="docker", image="x")),
    }
    socket_dir = str(OWN.socket_path.parent)
    assert _binds(own["bwrap"])["/run/ccc-relay"] == ("--ro-bind", socket_dir)
    i = own["bwrap"].index("--symlink", own["bwrap"].index("/run/ccc-relay"))
    assert own["bwrap"][i : i + 3] == ["--symlink", "/run/ccc-relay/relay.sock", "/run/ccc.sock"]
    for name in ("podman", "docker"):
        mounts = [own[name][i + 1] for i, a in enumerate(own[name]) if a == "--mount"]
        assert [m for m in mounts if socket_dir in m or "ccc.sock" in m or "relay" in m] == [
            f"type=bind,source={socket_dir},"
            + ("destination=/run/ccc-relay,ro=true" if name == "podman" else
               "target=/run/ccc-relay,readonly")
        ]  # fmt: skip
    # The socket file itself is mounted nowhere: after a relay restart it is a dead inode.
    assert all(str(OWN.socket_path) not in " ".join(argv) for argv in own.values())
    assert dict(replace(OWN, runtime="docker", image="x").environment())["CCC_SOCKET"] == (
        "/run/ccc-relay/relay.sock"  # docker's root is the image's: no link there
    )
    assert dict(replace(OWN, runtime="podman").environment())["CCC_SOCKET"] == "/run/ccc.sock"


def test_an_own_socket_directory_holds_relay_sock_only() -> None:
    with pytest.raises(SandboxSpecError, match=r"relay\.sock"):
        replace(OWN, socket_path=Path("/run/ccc-statusd/agents/alice.sock"))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
def test_staged_credential_belongs_to_the_sandbox_uid_only(tmp_path: Path) -> None:
    source = tmp_path / "alice.cred"
    source.write_text("agent: alice\ncredential: ccc1.x\n")
    source.chmod(0o600)
    staged = stage_credential(source, tmp_path / "sandbox" / "alice", 4321, 4321)
    info = staged.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4321, 0o400)
    assert staged.read_text() == source.read_text()
    assert stat.S_IMODE(staged.parent.stat().st_mode) == 0o700


def test_launcher_directories_must_be_private(tmp_path: Path) -> None:
    assert private_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(LaunchError, match="mode 0700"):
        private_dir(shared)
    with pytest.raises(LaunchError, match="mode 0700"):
        prepare_podman_rootfs(shared / "rootfs")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(LaunchError):
        private_dir(tmp_path / "link")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 4321, 4321)
        with pytest.raises(LaunchError, match="owned by uid 0"):
            private_dir(theirs)


def test_credential_symlink_or_fifo_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "alice.cred"
    link.symlink_to("/etc/hostname")
    with pytest.raises(LaunchError):
        open_credential(link)
    fifo = tmp_path / "fifo.cred"
    os.mkfifo(fifo)
    with pytest.raises(LaunchError, match="not a regular file"):
        open_credential(fifo)


# --- the CLI ---------------------------------------------------------------------


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A relay state dir with alice's credential and a listening socket, and a config for it.

    It lives in a fresh 0711 directory rather than pytest's tmp_path, whose
    0700 parent no sandbox uid could walk through. The root launcher's own
    directory is moved in there too, so no test writes to /run.
    """
    tmp_path = Path(tempfile.mkdtemp(prefix="ccc-cmdline-"))
    tmp_path.chmod(0o711)
    monkeypatch.setattr(containers_cmd, "ROOT_LAUNCHER_DIR", tmp_path / "launcher")
    state = tmp_path / "state"
    (state / "credentials").mkdir(parents=True)
    cred = state / "credentials" / "alice.cred"
    cred.write_text("agent: alice\ncredential: ccc1.x\n")
    cred.chmod(0o600)
    project = tmp_path / "project"
    project.mkdir()
    if os.geteuid() == 0:
        os.chown(project, 4321, 4321)
    config = tmp_path / "relay.yaml"
    config.write_text(f"daemon:\n  state_dir: {state}\n")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(state / "daemon.sock"))
    listener.listen()
    (state / "daemon.sock").chmod(0o660)
    if os.geteuid() == 0:
        os.chown(state / "daemon.sock", 0, 4321)
    try:
        yield {"state": state, "project": project, "config": config, "tmp": tmp_path}
    finally:
        listener.close()
        shutil.rmtree(tmp_path)


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(run, list(args))
    return result.exit_code, result.output


def test_cli_prints_a_bwrap_command(host: dict[str, Path]) -> None:
    code, out = _invoke(
        "alice",
        "--project",
        str(host["project"]),
        "--runtime",
        "bwrap",
        "--print",
        "--config",
        str(host["config"]),
        "--",
        "ls",
        "-la",
    )
    assert code == 0, out
    line, _, seccomp = out.strip().rpartition(" 4< <(")
    assert seccomp == f"{sys.executable} -m ccc_relay.containers.seccomp)"
    argv = shlex.split(line)
    assert argv[-2:] == ["3<", str(host["state"] / "credentials" / "alice.cred")]
    assert argv[argv.index("--") + 1 :][-4:-2] == ["ls", "-la"]
    assert argv[argv.index("--seccomp") + 1] == "4"
    bind = argv.index("--ro-bind", argv.index("--bind"))
    assert argv[bind : bind + 3] == [
        "--ro-bind",
        str(host["state"] / "daemon.sock"),
        "/run/ccc.sock",
    ]
    if os.geteuid() == 0:
        assert argv[:2] == ["setpriv", "--reuid=4321"]


def test_cli_prefers_the_agents_own_socket(host: dict[str, Path]) -> None:
    # A relay without per-agent sockets (a config file's default): the shared
    # socket, unless an agent's own socket is there after all.
    config = replace(
        embedded_defaults({"CCC_CACHE_DIR": str(host["state"])}),
        per_agent_sockets=False,
        agent_socket_dir=None,
    )
    assert agent_socket(config, "alice") == host["state"] / "daemon.sock"
    own_dir = host["state"] / "agents" / "alice"
    own_dir.mkdir(parents=True)
    own = socket.socket(socket.AF_UNIX)
    own.bind(str(own_dir / "relay.sock"))
    if os.geteuid() == 0:
        # What the relay's per-agent sockets are meant to be: that agent's uid only.
        os.chown(own_dir / "relay.sock", 4321, 4321)
    try:
        assert agent_socket(config, "alice") == own_dir / "relay.sock"
        code, out = _invoke(
            "alice",
            "--project",
            str(host["project"]),
            "--runtime",
            "bwrap",
            "--print",
            "--config",
            str(host["config"]),
        )
        assert code == 0, out
        # Its directory is mounted, and the usual path leads to the socket in it.
        assert f"--ro-bind {own_dir} /run/ccc-relay" in out
        assert "--symlink /run/ccc-relay/relay.sock /run/ccc.sock" in out
        assert "daemon.sock" not in out
    finally:
        own.close()


def test_cli_prints_a_docker_command_with_a_staged_credential(
    host: dict[str, Path],
) -> None:
    code, out = _invoke(
        "alice",
        "--project",
        str(host["project"]),
        "--runtime",
        "docker",
        "--image",
        "ccc-agent:1",
        "--print",
        "--config",
        str(host["config"]),
    )
    if code != 0 and "runtime docker is not usable" in out:
        pytest.skip("no docker client on PATH")
    assert code == 0, out
    argv = shlex.split(out)
    assert argv[:2] == ["docker", "run"]
    assert "ccc-agent:1" in argv
    if os.geteuid() == 0:
        staged = host["tmp"] / "launcher" / "credentials" / "alice" / "credential"
        assert f"type=bind,source={staged},target=/run/ccc/credential,readonly" in argv
        assert staged.stat().st_uid == 4321


def test_cli_prints_a_podman_command_over_a_private_skeleton(
    host: dict[str, Path],
) -> None:
    code, out = _invoke(
        "alice",
        "--project",
        str(host["project"]),
        "--runtime",
        "podman",
        "--print",
        "--config",
        str(host["config"]),
        "--",
        "true",
    )
    if code != 0 and "runtime podman is not usable" in out:
        pytest.skip("podman or runc is not installed")
    assert code == 0, out
    argv = shlex.split(out)
    rootfs = Path(argv[argv.index("--rootfs") + 1])
    assert argv[-1] == "true"
    assert stat.S_IMODE(rootfs.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    for value in argv:
        if value.startswith("nofile=") or value.startswith("nproc="):
            limit = resource.RLIMIT_NOFILE if value.startswith("nofile") else resource.RLIMIT_NPROC
            hard = resource.getrlimit(limit)[1]
            assert hard == resource.RLIM_INFINITY or int(value.split(":")[1]) <= hard


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bob"], "agent list' shows the agents; 'ccc --config"),
        (["alicf"], "did you mean 'alice'? "),
        (["Alice!"], "lower-case letters"),
        (["alice", "--project", "/nonexistent/project"], "does not exist"),
    ],
)
def test_cli_errors_say_what_to_do(host: dict[str, Path], args: list[str], message: str) -> None:
    if "--project" not in args:
        args = [*args, "--project", str(host["project"])]
    code, out = _invoke(*args, "--print", "--config", str(host["config"]))
    assert code != 0
    assert message in out


def test_cli_missing_socket_says_to_start_the_relay(host: dict[str, Path]) -> None:
    (host["state"] / "daemon.sock").unlink()
    code, out = _invoke(
        "alice", "--project", str(host["project"]), "--print", "--config", str(host["config"])
    )
    assert code == 3  # relay_unavailable, as docs/cli.md's table has it
    assert out.startswith("error: the relay socket")
    assert "ccc-statusd start" in out


def test_cli_missing_runtime_says_what_to_install(
    host: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(host["tmp"]))
    code, out = _invoke(
        "alice", "--project", str(host["project"]), "--print", "--config", str(host["config"])
    )
    assert code == 1
    assert "apt-get install bubblewrap" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid default applies to a root launcher")
def test_cli_root_owned_project_asks_for_uid(host: dict[str, Path]) -> None:
    os.chown(host["project"], 0, 0)
    code, out = _invoke(
        "alice",
        "--project",
        str(host["project"]),
        "--runtime",
        "bwrap",
        "--print",
        "--config",
        str(host["config"]),
    )
    assert code == 2  # a usage problem: which user to run as
    assert out.startswith("error: the project directory is owned by root")
    assert "pass --uid" in out and "as-root recipe" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="reachability is checked for a root launcher")
def test_cli_a_parent_the_uid_cannot_pass_is_named_not_chowned(host: dict[str, Path]) -> None:
    # As with a project under /root: the project is the uid's, a parent lets nobody through.
    private = host["tmp"] / "private"
    private.mkdir(mode=0o700)
    project = private / "shop-api"
    project.mkdir()
    os.chown(project, 4321, 4321)
    code, out = _invoke(
        "alice", "--project", str(project), "--runtime", "bwrap", "--uid", "4321", "--print",
        "--config", str(host["config"]),
    )  # fmt: skip
    assert code == 2
    said = " ".join(out.split())
    assert said.startswith("error: the sandbox could not use")
    assert f"no search permission on {private} " in said
    assert f"{private} does not let uid 4321 pass" in said
    assert "as-root recipe" in said
    assert "chown" not in said  # no chown of the project gets through its parent


def test_cli_other_ids_as_a_normal_user_are_a_usage_error(
    host: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:  # the launcher's own ids are the seam: a normal user's
        monkeypatch.setattr(os, "geteuid", lambda: 4321)
        monkeypatch.setattr(os, "getuid", lambda: 4321)
    code, out = _invoke(
        "alice", "--project", str(host["project"]), "--runtime", "bwrap",
        "--uid", str(os.getuid() + 1), "--print", "--config", str(host["config"]),
    )  # fmt: skip
    assert code == 2
    assert out.startswith("error: only root can choose")


@pytest.mark.skipif(os.geteuid() != 0, reason="reachability is checked for a root launcher")
def test_cli_unreachable_socket_is_reported_with_the_fix(host: dict[str, Path]) -> None:
    host["state"].chmod(0o700)
    code, out = _invoke(
        "alice",
        "--project",
        str(host["project"]),
        "--runtime",
        "bwrap",
        "--print",
        "--config",
        str(host["config"]),
    )
    assert code == 8  # a socket this user may not open
    assert out.startswith("error: the sandbox could not use")
    assert "no search permission" in out
    assert "socket_group" in out
