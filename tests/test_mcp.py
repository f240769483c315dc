"""``ccc mcp`` driven by the official MCP SDK client over stdio, against a real relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from ccc_relay.credentials import Credential, write_credential_file
from ccc_relay.integrations.fence import parse_fences
from tests.support import BIN, RunningRelay

pytestmark = pytest.mark.slow

TOOLS = {"send_message", "read_inbox", "wait_for_message", "list_agents", "whoami"}


@asynccontextmanager
async def mcp_session(relay: RunningRelay, agent: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=str(BIN / "ccc"),
        args=["mcp"],
        env={
            "CCC_SOCKET": str(relay.config.socket_path),
            "CCC_CREDENTIAL": str(relay.config.credentials_dir / f"{agent}.cred"),
            "CCC_CONFIG": "",
        },
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def test_two_agents_exchange_messages_through_mcp(relay: RunningRelay) -> None:
    relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob", both=True)

    async def scenario() -> None:
        async with mcp_session(relay, "alice") as alice, mcp_session(relay, "bob") as bob:
            tools = await alice.list_tools()
            assert {t.name for t in tools.tools} == TOOLS
            described = {t.name: t for t in tools.tools}
            assert "fence" in described["read_inbox"].description
            assert described["send_message"].input_schema["required"] == ["to", "text"]

            who = await alice.call_tool("whoami", {})
            assert not who.is_error and who.structured_content["agent"] == "alice"
            agents = await alice.call_tool("list_agents", {})
            assert agents.structured_content["result"][0]["name"] == "bob"

            sent = await alice.call_tool(
                "send_message", {"to": "bob", "text": "API changed", "thread": "api"}
            )
            assert not sent.is_error, text_of(sent)
            assert sent.structured_content["status"] == "accepted"
            inbox = await bob.call_tool("read_inbox", {"limit": 10})
            [fenced] = parse_fences(inbox.structured_content["result"])
            assert (fenced.sender, fenced.body, fenced.message_id) == (
                "alice",
                "API changed",
                sent.structured_content["id"],
            )
            empty = await bob.call_tool("read_inbox", {})
            assert "No messages" in empty.structured_content["result"]

            # wait_for_message wakes on arrival ...
            waiting = asyncio.ensure_future(bob.call_tool("wait_for_message", {"timeout_s": 20}))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await alice.call_tool("send_message", {"to": "bob", "text": "are you there?"})
            woke = await waiting
            assert time.monotonic() - started < 5
            assert parse_fences(woke.structured_content["result"])[0].body == "are you there?"
            # ... and times out cleanly
            started = time.monotonic()
            idle = await bob.call_tool("wait_for_message", {"timeout_s": 0.5})
            assert not idle.is_error and "No message arrived" in idle.structured_content["result"]
            assert time.monotonic() - started < 5

            # refusals surface as tool errors with the relay's code and sentence
            refused = await alice.call_tool("send_message", {"to": "mallory", "text": "x"})
            assert refused.is_error
            assert "forbidden: you may not send to 'mallory'" in text_of(refused)
            invalid = await alice.call_tool("send_message", {"to": "../etc", "text": "x"})
            assert invalid.is_error

    asyncio.run(scenario())


def test_mcp_server_starts_without_a_relay_and_says_so(state_dir: Path) -> None:
    credential = state_dir / "alice.cred"
    write_credential_file(credential, "alice", Credential.generate())

    async def whoami(env: dict[str, str]) -> str:
        params = StdioServerParameters(command=str(BIN / "ccc"), args=["mcp"], env=env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("whoami", {})
            assert result.is_error
            return text_of(result)

    socket = str(state_dir / "none.sock")
    no_relay = asyncio.run(whoami({"CCC_SOCKET": socket, "CCC_CREDENTIAL": str(credential)}))
    assert "relay_unavailable: no relay is listening" in no_relay
    # A credential that is not there is its own problem, with the way to make it.
    missing = str(state_dir / "bob.cred")
    no_file = asyncio.run(whoami({"CCC_SOCKET": socket, "CCC_CREDENTIAL": missing}))
    assert "credential_missing" in no_file and "ccc agent add bob" in no_file
    # None named at all: the same code, and what to set.
    unnamed = asyncio.run(whoami({"CCC_SOCKET": socket, "CCC_CREDENTIAL": ""}))
    assert "credential_missing: no credential: set CCC_CREDENTIAL" in unnamed


def test_a_tool_error_writes_no_log_noise_to_stderr(relay: RunningRelay, tmp_path: Path) -> None:
    """The model gets the refusal; the agent's terminal gets no rich INFO line for it."""
    relay.add_agent("alice")
    errlog = tmp_path / "stderr.txt"

    async def scenario() -> None:
        params = StdioServerParameters(
            command=str(BIN / "ccc"),
            args=["mcp"],
            env={
                "CCC_SOCKET": str(relay.config.socket_path),
                "CCC_CREDENTIAL": str(relay.config.credentials_dir / "alice.cred"),
                "CCC_CONFIG": "",
            },
        )
        with errlog.open("w") as err:
            async with (
                stdio_client(params, errlog=err) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                refused = await session.call_tool("send_message", {"to": "nobody", "text": "x"})
                assert refused.is_error and "forbidden" in text_of(refused)
                bad = await session.call_tool("send_message", {"to": "", "text": "x"})
                assert bad.is_error

    asyncio.run(scenario())
    logged = errlog.read_text()
    assert "INFO" not in logged and "failed" not in logged and "server.py" not in logged, logged
