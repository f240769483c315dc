"""The README's Quickstart, run exactly as written: its own text is the script.

Terminal 1's block starts the relay with ``./dev.sh start``; terminal 2's block is
run line by line in one bash session from the checkout, as a newcomer pastes it,
unedited (a shell variable carries the message id from the send to the reply).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

MESSAGE_ID = re.compile(r"\bm_[A-Za-z0-9_-]{6,}")


def quickstart_blocks() -> list[list[str]]:
    """The ``sh`` blocks of the README's Quickstart section, as lists of command lines."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [
        [line.split("  #")[0].rstrip() for line in block.splitlines() if line.strip()]
        for block in blocks
    ]


@pytest.fixture
def relay_from_dev_sh(state_dir: Path) -> Iterator[dict[str, str]]:
    [terminal_1, _terminal_2, *_] = quickstart_blocks()
    assert terminal_1 == ["./dev.sh start"]
    env = {
        **os.environ,
        "CCC_CACHE_DIR": str(state_dir),
        "CCC_SOCKET": "",
        "CCC_CREDENTIAL": "",
        "CCC_CONFIG": "",
    }
    relay = subprocess.Popen(
        ["bash", "-c", terminal_1[0]], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120  # dev.sh checks the venv first
    while not (state_dir / "daemon.sock").exists():
        if relay.poll() is not None:
            pytest.fail(f"./dev.sh start exited {relay.returncode}: {relay.stderr.read()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the relay did not come up"
        time.sleep(0.05)
    try:
        yield env
    finally:
        relay.terminate()  # Ctrl-C's twin: the relay stops cleanly on SIGTERM
        try:
            assert relay.wait(15) == 0, relay.stderr.read()  # type: ignore[union-attr]
        finally:
            relay.kill()
            relay.stderr.close()  # type: ignore[union-attr]


STEP = re.compile(r"\n@@quickstart step (\d+)@@\n")


def _run_in_one_session(lines: list[str], env: dict[str, str]) -> list[tuple[str, int, str]]:
    """Each line's (stdout, exit status, stderr), run one after another by one bash, as
    pasted into one terminal: a variable a line sets is there for the next."""
    script = "".join(
        f"{line}\nstatus=$?; echo; echo @@quickstart step $status@@; echo @@step@@ >&2\n"
        for line in lines
    )
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    parts = STEP.split(done.stdout)  # out, status, out, status, ..., ""
    outs, statuses = parts[0:-1:2], [int(s) for s in parts[1::2]]
    errs = done.stderr.split("@@step@@\n")
    assert len(outs) == len(statuses) == len(lines), (done.stdout, done.stderr)
    return list(zip(outs, statuses, errs, strict=False))


def test_terminal_two_runs_as_written(relay_from_dev_sh: dict[str, str]) -> None:
    [_terminal_1, terminal_2, *_] = quickstart_blocks()
    assert terminal_2[0] == ". .venv/bin/activate"
    assert not any(re.search(r"<[^>]*>", line) for line in terminal_2), (
        "a placeholder a newcomer must edit (and bash reads '<' as a redirection)"
    )
    steps = _run_in_one_session(terminal_2, relay_from_dev_sh)
    for line, (out, status, err) in zip(terminal_2, steps, strict=True):
        assert status == 0, (line, out, err)
    outputs = [out for out, _, _ in steps]
    # What the Quickstart's comments promise: the message arrived, the reply came
    # back answering it, and the audit log holds every decision.
    inbox = outputs[terminal_2.index("ccc --as bob inbox")]
    assert "the API changed, please update the client" in inbox
    [sent_id] = set(MESSAGE_ID.findall(inbox))
    watched = outputs[terminal_2.index("ccc --as alice watch --count 1")]
    assert "done" in watched and sent_id in watched, watched
    assert '"event":"accepted"' in outputs[-1] or '"event": "accepted"' in outputs[-1]
