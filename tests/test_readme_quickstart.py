"""The README's Quickstart, run exactly as written: its own text is the script.

Terminal 1's block starts the relay with ``./dev.sh start``; terminal 2's block is
run line by line in one bash session from the checkout, as a newcomer pastes it.
The only edit is the placeholder ``<id from above>``, which a reader fills in with
the id the previous command printed.
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


def test_terminal_two_runs_as_written(relay_from_dev_sh: dict[str, str]) -> None:
    [_terminal_1, terminal_2, *_] = quickstart_blocks()
    assert terminal_2[0] == ". .venv/bin/activate"
    previous = ""
    outputs: list[str] = []
    for line in terminal_2[1:]:
        command = line
        if "<id from above>" in command:
            [message_id] = MESSAGE_ID.findall(previous)
            command = command.replace("<id from above>", message_id)
        done = subprocess.run(
            ["bash", "-c", f". .venv/bin/activate && {command}"], cwd=ROOT,
            env=relay_from_dev_sh, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        previous = done.stdout
        outputs.append(done.stdout)
    transcript = "\n".join(outputs)
    # What the Quickstart's comments promise: the message arrived, the reply came
    # back, and the audit log holds every decision.
    assert "the API changed, please update the client" in transcript
    assert "done" in outputs[terminal_2.index("ccc --as alice watch --count 1") - 1]
    assert '"event":"accepted"' in outputs[-1] or '"event": "accepted"' in outputs[-1]
