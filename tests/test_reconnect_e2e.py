"""``ccc watch`` and ``ccc mcp`` outlive a relay that is killed and started again.

The relay is a real ``ccc-statusd`` subprocess (``tests/relay_process.py``),
SIGKILLed and restarted on the same state dir while ``ccc watch`` runs as a real
process, and while the MCP server's ``wait_for_message`` tool (driven by the
official MCP SDK client, as in ``tests/test_mcp.py``) waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from ccc_relay.client import RelayClient
from ccc_relay.integrations.fence import parse_fences
from tests.relay_process import RelayProcess
from tests.support import BIN

pytestmark = pytest.mark.slow


@pytest.fixture
def relay(state_dir: Path) -> Iterator[RelayProcess]:
    process = RelayProcess(state_dir)
    process.start()
    yield process
    process.stop()


def agent_env(relay: RelayProcess, agent: str) -> dict[str, str]:
    return {
        "CCC_SOCKET": str(relay.socket),
        "CCC_CREDENTIAL": str(relay.state / "credentials" / f"{agent}.cred"),
        "CCC_CONFIG": "",
    }


def lines_of(stream: IO[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """The lines a pipe yields, on a queue a test can wait on with a timeout;
    the thread ends (closing the pipe) at its end."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        with stream:
            for line in stream:
                lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


def test_ccc_watch_keeps_printing_across_relay_restarts(relay: RelayProcess) -> None:
    alice = relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob")
    watch = subprocess.Popen(
        [str(BIN / "ccc"), "watch", "--json", "--count", "4"],
        env={**os.environ, **agent_env(relay, "bob")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert watch.stdout is not None and watch.stderr is not None
    (out, out_pump), (err, err_pump) = lines_of(watch.stdout), lines_of(watch.stderr)
    try:

        def send(text: str) -> str:
            with RelayClient(alice, timeout=10) as client:
                return client.send("bob", text).id

        def printed() -> dict[str, str]:
            record = json.loads(out.get(timeout=20))
            return {"id": record["id"], "body": record["body"]}

        first = send("before the crash")
        assert printed() == {"id": first, "body": "before the crash"}

        relay.kill()
        relay.start()
        second = send("after the first restart")
        assert printed() == {"id": second, "body": "after the first restart"}

        # Down for a while: watch backs off and keeps trying; a message sent
        # once the relay is back is printed.
        relay.kill()
        time.sleep(1.0)
        relay.start()
        third = send("after the second restart")
        fourth = send("and one more")
        assert printed() == {"id": third, "body": "after the second restart"}
        assert printed() == {"id": fourth, "body": "and one more"}

        assert watch.wait(20) == 0  # --count 4: each message printed once, then done
        out_pump.join(10)
        err_pump.join(10)
        assert out.empty()
        notes = []
        while not err.empty():
            notes.append(err.get())
        assert any("reconnecting" in note for note in notes), notes
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)
        out_pump.join(10)
        err_pump.join(10)


def test_mcp_wait_for_message_returns_a_message_sent_after_a_restart(
    relay: RelayProcess,
) -> None:
    alice = relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob", both=True)

    def send(text: str) -> str:
        with RelayClient(alice, timeout=10) as client:
            return client.send("bob", text).id

    async def scenario() -> None:
        # The SDK hands the server a minimal environment: PYTHONPATH, when a
        # run sets it, must reach it too.
        env = {**agent_env(relay, "bob"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        params = StdioServerParameters(command=str(BIN / "ccc"), args=["mcp"], env=env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as bob:
            await bob.initialize()
            who = await bob.call_tool("whoami", {})  # the tools' own connection is up
            assert not who.is_error

            waiting = asyncio.ensure_future(bob.call_tool("wait_for_message", {"timeout_s": 30}))
            await asyncio.sleep(0.5)  # subscribed
            await asyncio.to_thread(relay.kill)
            await asyncio.to_thread(relay.start)
            sent = await asyncio.to_thread(send, "sent after the restart")
            woke = await asyncio.wait_for(waiting, 25)
            assert not woke.is_error, woke
            [fenced] = parse_fences(woke.structured_content["result"])
            assert (fenced.body, fenced.message_id) == ("sent after the restart", sent)

            # The tools' connection came back too: it resumes and sends.
            answer = await bob.call_tool("send_message", {"to": "alice", "text": "got it"})
            assert not answer.is_error, answer
            assert answer.structured_content["status"] == "accepted"
            # Acknowledged once: nothing is waiting any more.
            inbox = await bob.call_tool("read_inbox", {})
            assert "No messages" in inbox.structured_content["result"]

    asyncio.run(scenario())
