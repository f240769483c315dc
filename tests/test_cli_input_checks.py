"""Input the relay could never take is refused by ``ccc`` before it connects, in the
user's words, with the usage exit (docs/cli.md, "Errors")."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support import BIN
from tests.test_cli import ok

pytestmark = pytest.mark.slow


def _ccc(
    args: list[bytes], env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [os.fsencode(BIN / "ccc"), *args],
        env={**os.environ, **env},
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_input_that_is_not_utf8_is_refused_before_connecting(
    daemon: dict[str, str],
) -> None:
    env = daemon
    for name in ("alice", "bob"):
        ok("ccc", "agent", "add", name, env=env)
    ok("ccc", "allow", "alice", "bob", env=env)
    piped = _ccc([b"--as", b"alice", b"send", b"bob"], env, stdin=b"\xff\xfe bad utf8")
    assert piped.returncode == 2
    assert piped.stderr.decode() == (
        "error: the message (standard input) is not valid UTF-8 (byte 0xff at offset 0)\n"
    )
    typed = _ccc([b"--as", b"alice", b"send", b"bob", b"ok\xff"], env)
    assert typed.returncode == 2
    assert typed.stderr.decode().startswith(
        "error: the message is not valid UTF-8 (byte 0xff at offset 2)\n"
        "  next: see 'ccc send --help'"
    )
    thread = _ccc([b"--as", b"alice", b"send", b"bob", b"hi", b"--thread", b"a\xc3"], env)
    assert (
        thread.returncode == 2
        and b"'--thread' is not valid UTF-8 (byte 0xc3 at offset 1)" in thread.stderr
    )
    # Direct mode reads standard input the same way (before it looks for a listener).
    peer = _ccc([b"peer", b"send", b"bob"], env, stdin=b"\xff")
    assert peer.returncode == 2
    assert b"the message (standard input) is not valid UTF-8 (byte 0xff" in peer.stderr
    name = _ccc([b"agent", b"add", b"z\xff"], env)
    assert name.returncode == 2 and b"'NAME' is not valid UTF-8" in name.stderr
    # --json: the error object on stdout, whether the bad bytes came from argv or stdin.
    for args, stdin in (([b"bob", b"\xff", b"--json"], b""), ([b"bob", b"--json"], b"\xff")):
        result = _ccc([b"--as", b"alice", b"send", *args], env, stdin=stdin)
        error = json.loads(result.stdout)["error"]
        assert result.returncode == 2 and error["exit"] == 2 and error["code"] == "usage"
        assert "is not valid UTF-8 (byte 0xff at offset 0)" in error["message"]
    # Nothing reached the relay; valid UTF-8 still goes through.
    assert json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env)) == {"messages": []}
    sent = _ccc([b"--as", b"alice", b"send", b"bob"], env, stdin="h\u00e9llo".encode())
    assert sent.returncode == 0, sent.stderr
    inbox = json.loads(ok("ccc", "--as", "bob", "inbox", "--json", env=env))["messages"]
    assert [m["body"] for m in inbox] == ["h\u00e9llo"]


def test_a_usage_error_has_the_shape_of_every_error(daemon: dict[str, str]) -> None:
    result = _ccc([b"send", b"--bogus", b"--json"], daemon)
    assert result.returncode == 2
    assert result.stderr.decode() == (
        "error: No such option '--bogus'.\n  next: see 'ccc send --help'\n"
    )
    assert json.loads(result.stdout)["error"]["exit"] == 2
