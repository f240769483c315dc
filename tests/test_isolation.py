"""The isolation proof: two agents in real bubblewrap sandboxes talk through a real relay.

Start a relay with per-agent sockets; register alice and bob, bound to their
sandbox uids and allowed to talk; launch each with the command line ``ccc
run`` uses, on its own project dir. Then, from inside the sandboxes:

* alice sends to bob and bob replies, through the relay;
* alice cannot read or list bob's project, the relay's state dir, the
  credential store or bob's credential; writing outside /workspace and /tmp fails;
* alice cannot authenticate as bob: not with her own credential, not with
  bob's credential on her socket, not with bob's credential on bob's socket
  from her uid;
* alice cannot open a TCP connection to a listener on the host's loopback,
  and has no interface but ``lo``;
* the relay's audit shows each refusal with the sandboxed peer's uid.

The agent inside speaks the wire protocol with a stdlib-only probe: the
sandbox sees the host's /usr (python3), not this checkout.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ccc_relay.containers.detect import capped_ulimits, missing_tools, present_etc_files
from ccc_relay.containers.sandbox import launch_command, run_sandbox
from ccc_relay.containers.spec import SandboxSpec
from ccc_relay.containers.staging import prepare_podman_rootfs, stage_credential
from tests.support import RunningRelay, make_config, start_relay
from tests.test_relay import audit_lines, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes run as other uids: needs root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("bwrap", "setpriv", "groupadd")),
        reason="needs bubblewrap and util-linux (apt-get install bubblewrap)",
    ),
]

ALICE_UID, BOB_UID = 4331, 4332
PYTHON = "/usr/bin/python3"

PROBE = r"""
import errno, json, os, socket, sys
args = json.loads(sys.argv[1])
out = {"uid": os.getuid()}

def attempt(fn):
    try:
        return ["ok", fn()]
    except OSError as exc:
        return [errno.errorcode.get(exc.errno, str(exc)), None]

class Relay:
    def __init__(self, path="/run/ccc.sock"):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""
    def call(self, frame, until):
        self.s.sendall(json.dumps(frame).encode() + b"\n")
        frames = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    return frames
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            frames.append(json.loads(line))
            if frames[-1]["type"] in until:
                return frames

def own_credential():
    fields = dict(l.split(": ", 1) for l in open(os.environ["CCC_CREDENTIAL"]).read().splitlines()
                  if ": " in l and not l.startswith("#"))
    return fields["agent"], fields["credential"]

def hello(relay, agent, credential):
    return relay.call({"type": "hello", "agent": agent, "credential": credential},
                      ("welcome", "error"))[-1]

me, cred = own_credential()
out["me"] = me
if args.get("send"):
    r = Relay()
    out["hello"] = hello(r, me, cred)["type"]
    out["send"] = r.call({"type": "send", "seq": 1, "to": args["send"][0], "body": args["send"][1]},
                         ("accepted", "error"))[-1]
if args.get("fetch"):
    r = Relay()
    hello(r, me, cred)
    frames = r.call({"type": "fetch", "limit": 10}, ("fetched",))
    msgs = [f for f in frames if f["type"] == "message"]
    if msgs:
        r.call({"type": "ack", "ids": [m["id"] for m in msgs]}, ("acked",))
    out["messages"] = [{"from": m["from"], "body": m["body"], "id": m["id"]} for m in msgs]
if args.get("as_other"):
    agent, credential = args["as_other"]
    out["as_other"] = hello(Relay(), agent, credential)
if args.get("own_cred_as"):
    out["own_cred_as"] = hello(Relay(), args["own_cred_as"], cred)
if args.get("look"):
    out["exists"] = {p: os.path.exists(p) for p in args["look"]}
    out["listdir"] = {p: attempt(lambda p=p: sorted(os.listdir(p))) for p in args["look"]}
    def write(p):
        with open(p, "w") as f:
            f.write("x")
    out["writes"] = {p: attempt(lambda p=p: write(p))[0] for p in args["write"]}
    out["tcp"] = attempt(lambda: socket.create_connection(("127.0.0.1", args["tcp_port"]),
                                                          timeout=2).close())[0]
    with open("/proc/net/dev") as f:
        out["interfaces"] = sorted(l.split(":")[0].strip() for l in f.readlines()[2:])
print(json.dumps(out))
"""


@dataclass
class World:
    relay: RunningRelay
    base: Path
    projects: dict[str, Path]
    group_gid: int
    runtime: str = "bwrap"
    rootfs: Path | None = None

    def spec(self, agent: str, uid: int, **changes: object) -> SandboxSpec:
        config = self.relay.config
        spec = SandboxSpec(
            agent=agent,
            project_dir=self.projects[agent],
            socket_path=config.agent_socket(agent),
            credential_path=config.credentials_dir / f"{agent}.cred",
            uid=uid,
            gid=self.group_gid,
        )
        return replace(spec, **changes)  # type: ignore[arg-type]

    def probe(self, spec: SandboxSpec, **args: object) -> dict:
        spec = replace(spec, command=(PYTHON, "-c", PROBE, json.dumps(args)), runtime=self.runtime)
        if self.runtime == "bwrap":
            result = run_sandbox(spec, timeout=60)
        else:  # podman: the launcher stages a uid-owned copy of the credential
            staged = stage_credential(spec.credential_path,
                                      self.base / "launcher" / f"staged-{spec.uid}",
                                      spec.uid, spec.gid)  # fmt: skip
            argv = launch_command(replace(spec, credential_path=staged), as_root=True,
                                  rootfs_dir=self.rootfs, etc_files=present_etc_files(),
                                  ulimits=capped_ulimits())  # fmt: skip
            result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return json.loads(result.stdout)


@pytest.fixture(params=["bwrap", "podman"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    runtime = request.param
    if runtime == "podman" and missing_tools("podman", as_root=True):
        pytest.skip("podman and runc are not installed (apt-get install podman runc)")
    group = f"ccc-test-s{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", group], check=True)
    base = Path(tempfile.mkdtemp(prefix="ccc-iso-"))
    relay: RunningRelay | None = None
    try:
        import grp

        gid = grp.getgrnam(group).gr_gid
        base.chmod(0o711)  # walkable by the sandbox uids, not listable
        projects = {}
        for name, uid in (("alice", ALICE_UID), ("bob", BOB_UID)):
            project = base / f"{name}-project"
            project.mkdir()
            (project / "NOTES.md").write_text(f"{name}'s private notes\n")
            os.chown(project, uid, gid)
            project.chmod(0o755)  # readable on the host: only the mounts keep it apart
            projects[name] = project
        config = replace(
            make_config(base / "state"),
            per_agent_sockets=True,
            agent_socket_dir=base / "sockets",
            socket_group=group,
        )
        relay = start_relay(config)
        relay.add_agent("alice", uid=ALICE_UID)
        relay.add_agent("bob", uid=BOB_UID)
        relay.allow("alice", "bob", both=True)
        rootfs = None
        if runtime == "podman":
            rootfs = prepare_podman_rootfs(base / "launcher" / "rootfs",
                                           etc_files=present_etc_files())  # fmt: skip
        yield World(relay, base, projects, gid, runtime, rootfs)
    finally:
        if relay is not None:
            relay.stop()
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["groupdel", group], check=False, capture_output=True)


def test_isolation_proof(world: World) -> None:
    config = world.relay.config
    bob_credential = (config.credentials_dir / "bob.cred").read_text()
    bob_fields = dict(
        line.split(": ", 1)
        for line in bob_credential.splitlines()
        if ": " in line and not line.startswith("#")
    )
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        tcp_port = listener.getsockname()[1]
        alice = world.probe(
            world.spec("alice", ALICE_UID),
            send=["bob", "the API changed, please update the client"],
            own_cred_as="bob",
            as_other=["bob", bob_fields["credential"]],  # even a stolen credential
            look=[
                str(world.projects["bob"]),
                str(config.state_dir),
                str(config.credentials_dir),
                str(config.credentials_dir / "bob.cred"),
                str(config.audit.log_path),
                "/workspace",
            ],
            write=[
                "/workspace/ok.txt",
                "/tmp/ok.txt",
                "/usr/evil",
                "/etc/evil",
                "/evil",
                "/run/ccc/credential",
            ],
            tcp_port=tcp_port,
        )
    finally:
        listener.close()

    # alice talks to bob through the relay ...
    assert alice["uid"] == ALICE_UID and alice["me"] == "alice"
    assert alice["hello"] == "welcome" and alice["send"]["type"] == "accepted"
    bob = world.probe(world.spec("bob", BOB_UID), fetch=True, send=["alice", "done, updated"])
    assert bob["messages"][0]["from"] == "alice"
    assert bob["messages"][0]["body"] == "the API changed, please update the client"
    assert bob["send"]["type"] == "accepted"
    reply = world.probe(world.spec("alice", ALICE_UID), fetch=True)
    assert [m["body"] for m in reply["messages"]] == ["done, updated"]

    # ... but sees nothing of bob, the relay's state, or the credential store
    for path in (
        world.projects["bob"],
        config.state_dir,
        config.credentials_dir,
        config.credentials_dir / "bob.cred",
        config.audit.log_path,
    ):
        assert alice["exists"][str(path)] is False, path
        assert alice["listdir"][str(path)][0] == "ENOENT", path
    assert alice["exists"]["/workspace"] is True
    assert alice["listdir"]["/workspace"][1] == ["NOTES.md"]  # listed before the write
    assert alice["writes"]["/workspace/ok.txt"] == "ok" and alice["writes"]["/tmp/ok.txt"] == "ok"
    for path in ("/usr/evil", "/etc/evil", "/evil", "/run/ccc/credential"):
        assert alice["writes"][path] in ("EROFS", "EACCES", "ENOENT", "EPERM"), path
    assert (world.projects["alice"] / "ok.txt").exists()

    # ... cannot become bob
    assert alice["own_cred_as"]["code"] == "auth_failed"
    assert alice["as_other"]["code"] == "auth_failed"  # bob's credential on alice's socket
    on_bobs_socket = world.probe(
        world.spec("alice", ALICE_UID, socket_path=config.agent_socket("bob")),
        as_other=["bob", bob_fields["credential"]],
    )  # right socket, right credential, wrong uid
    assert on_bobs_socket["as_other"]["code"] == "auth_failed"

    # ... and has no network
    assert alice["interfaces"] == ["lo"]
    assert alice["tcp"] in ("ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "ETIMEDOUT")

    # every refusal is in the audit with the sandboxed peer's uid
    def refusals() -> list[dict]:
        return [x for x in audit_lines(world.relay) if x["event"] in ("refused", "auth_refused")]

    wait_for(lambda: len(refusals()) >= 3)
    assert {x["peer_uid"] for x in refusals()} == {ALICE_UID}
    assert any(x.get("socket_agent") == "alice" and x["agent"] == "bob" for x in refusals())
    authenticated = [x for x in audit_lines(world.relay) if x["event"] == "authenticated"]
    assert {x["peer_uid"] for x in authenticated} == {ALICE_UID, BOB_UID}
