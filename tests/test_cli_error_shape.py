"""Every error in one shape (docs/cli.md, "Errors"): ``error: ...`` in the user's words,
a specific code in brackets, the exit of the table. Run as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_cli
from tests.test_cli import ok

pytestmark = pytest.mark.slow


def test_errors_share_one_shape(daemon: dict[str, str], tmp_path: Path) -> None:
    env = daemon
    ok("ccc", "agent", "add", "alice", env=env)
    ok("ccc", "agent", "add", "bob", env=env)
    ok("ccc", "allow", "alice", "bob", env=env)
    again = run_cli("ccc", "agent", "add", "alice", env=env)
    assert again.returncode == 7
    assert again.stderr.startswith("error: agent alice's credential file ")
    assert again.stderr.rstrip().endswith("'ccc agent remove alice' [conflict]")
    # ccc run's own errors look like the others (not click's "Error:").
    run = run_cli("ccc", "run", "nobody", "--project", str(tmp_path), env=env)
    assert run.returncode != 0 and run.stderr.startswith("error: "), run.stderr
    # No credential named at all is a missing one, not an invalid one.
    none = run_cli("ccc", "inbox", env={**env, "CCC_CREDENTIAL": ""})
    assert none.returncode == 8
    assert none.stderr.startswith("error: no credential: set CCC_CREDENTIAL")
    assert none.stderr.rstrip().endswith("[credential_missing]")
    # The size limit, without the protocol's aside that the connection was closed.
    big = run_cli("ccc", "--as", "alice", "send", "bob", env=env, input="a" * 2_000_000)
    assert big.returncode == 1
    assert big.stderr.rstrip().endswith("the limit is 1000000 bytes [too_large]"), big.stderr
    assert "connection" not in big.stderr
