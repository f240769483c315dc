"""A real ``ccc-statusd`` as a subprocess, to be killed and started again.

Like ``tests/test_durability.py``: the daemon runs from the venv with its own
config and state dir; agents are added through the admin socket and their
credential files written where ``ccc --as NAME`` and ``CCC_CREDENTIAL`` find
them (``<state>/credentials/NAME.cred``). ``start`` returns once a hello is
answered -- the daemon is really serving -- and says how long that took. That
hello is the first agent's, resuming one session every time (an agent keeps a
bounded number of sessions: a new one per restart would push out the others).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from ccc_relay.client import AdminClient, Endpoint
from ccc_relay.credentials import Credential, write_credential_file
from ccc_relay.protocol.codec import decode_relay_frame, encode
from ccc_relay.protocol.frames import Error, Hello, Welcome
from tests.support import BIN

# Generous: every limit stays out of the way of a test that measures
# durability, not policy.
CONFIG = """\
daemon:
  state_dir: {state}
  security:
    rate_limit: 1000000 msg/min/session
    agent_rate_limit: 1000000 msg/min/session
    pair_rate_limit: 1000000 msg/min/session
    global_rate_limit: 1000000 msg/min/session
"""


class RelayProcess:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.config = state / "relay.yaml"
        self.config.write_text(CONFIG.format(state=state))
        self.socket = state / "daemon.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.probe: tuple[str, Credential] | None = None  # an agent to say hello as
        self.probe_session: str | None = None  # resumed by every probe: one session in all
        self.log = state / "statusd.log"

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.state / "admin.sock")

    def start(self, timeout: float = 30.0) -> float:
        """Start the daemon; return the seconds until it answered a hello (or,
        before any agent exists, until its pid file appeared)."""
        assert self.proc is None or self.proc.poll() is not None
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "ccc-statusd"), "start", "--allow-root", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = started + timeout
        while not self._serving():
            assert self.proc.poll() is None, "the daemon exited:\n" + self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.005)
        return time.monotonic() - started

    def _serving(self) -> bool:
        if self.probe is None:
            return (self.state / "daemon.pid").exists()
        agent, credential = self.probe
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(str(self.socket))
            hello = Hello(agent=agent, credential=credential.reveal(), resume=self.probe_session)
            sock.sendall(encode(hello))
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                data += chunk
            answer = decode_relay_frame(data.splitlines()[0])
            if isinstance(answer, Error) and answer.code == "session_expired":
                self.probe_session = None  # its creation died with the last daemon
                return False
            if isinstance(answer, Welcome):
                self.probe_session = answer.session
                return True
            return False
        except OSError:
            return False
        finally:
            sock.close()

    def kill(self) -> None:
        """SIGKILL: no chance to flush, close or clean up anything."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        # A SIGKILLed daemon cannot remove its pid file; the socket it leaves is
        # found stale (connection refused) and replaced by the next start.
        (self.state / "daemon.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def add_agent(self, name: str) -> Endpoint:
        credential = Credential.generate()
        write_credential_file(self.state / "credentials" / f"{name}.cred", name, credential)
        self.admin.request("agent_add", name=name, cred_hash=credential.digest())
        if self.probe is None:
            self.probe = (name, credential)
        return Endpoint(self.socket, name, credential)

    def allow(self, sender: str, recipient: str, *, both: bool = False) -> None:
        self.admin.request("allow", sender=sender, recipient=recipient, both=both)

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "ccc"), "audit", "verify", "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
