"""``ccc mcp`` in the caller's words: bad arguments get a sentence, a changed text is shown.

Driven by the official MCP SDK client over stdio against a real relay, like
tests/test_mcp.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support import RunningRelay
from tests.test_mcp import mcp_session, text_of

pytestmark = pytest.mark.slow

BAD_CALLS = [
    (
        "send_message",
        {"to": "bob"},
        "send_message: argument 'text' is missing; expected a string (the message text).",
    ),
    (
        "send_message",
        {"to": "bob", "text": 5},
        "send_message: argument 'text' is a number; expected a string (the message text).",
    ),
    (
        "send_message",
        {"to": "bob", "text": ["a", "b"]},
        "send_message: argument 'text' is a list; expected a string (the message text).",
    ),
    (
        "send_message",
        {"to": "bob", "text": "hi", "thread": "t" * 200},
        "send_message: argument 'thread' is 200 characters long; expected a string of at most "
        "128 characters, or null (conversation id).",
    ),
    (
        "read_inbox",
        {"limit": 0},
        "read_inbox: argument 'limit' is 0; expected a whole number from 1 to 100 "
        "(most messages to return).",
    ),
    (
        "read_inbox",
        {"limit": "many"},
        "read_inbox: argument 'limit' is not a whole number; expected a whole number from 1 "
        "to 100 (most messages to return).",
    ),
    (
        "wait_for_message",
        {"timeout_s": -1},
        "wait_for_message: argument 'timeout_s' is -1; expected a number from 0 to 3600 "
        "(seconds to wait).",
    ),
]


def test_bad_arguments_are_answered_with_a_sentence(relay: RunningRelay) -> None:
    relay.add_agent("alice")
    relay.add_agent("bob")
    relay.allow("alice", "bob")

    async def scenario() -> None:
        async with mcp_session(relay, "alice") as alice:
            for tool, arguments, expected in BAD_CALLS:
                result = await alice.call_tool(tool, arguments)
                assert result.is_error, (tool, arguments)
                assert text_of(result) == expected
            # Every argument that is wrong is named, each in its own sentence.
            both = text_of(await alice.call_tool("send_message", {"to": ""}))
            assert both.startswith("send_message: argument 'to' is empty; expected a string of 1")
            assert "send_message: argument 'text' is missing" in both
            for noise in ("pydantic", "https://", "validation error", "type=", "Arguments"):
                assert noise not in both
            # The session is fine afterwards.
            sent = await alice.call_tool("send_message", {"to": "bob", "text": "ok"})
            assert not sent.is_error, text_of(sent)

    asyncio.run(scenario())


def test_send_message_says_the_delivered_text_when_the_relay_changed_it(
    relay: RunningRelay,
) -> None:
    relay.add_agent("alice")
    bob_endpoint = relay.add_agent("bob")
    relay.allow("alice", "bob")

    async def scenario() -> None:
        async with mcp_session(relay, "alice") as alice:
            changed = await alice.call_tool(
                "send_message", {"to": "bob", "text": "read ~/.aws/credentials"}
            )
            assert not changed.is_error, text_of(changed)
            answer = changed.structured_content
            assert answer["delivered"] == "read [path:~%2F.aws%2Fcredentials]"
            assert answer["changes"] == ["escaped 1 filesystem path"]
            plain = await alice.call_tool(
                "send_message",
                {"to": "bob", "text": "the API changed: /v2/orders now needs a cursor"},
            )
            assert "delivered" not in plain.structured_content
            assert plain.structured_content["changes"] == []

    asyncio.run(scenario())
    with relay.client(bob_endpoint) as bob:
        bodies = [m.body for m in bob.inbox()]
    assert bodies == [
        "read [path:~%2F.aws%2Fcredentials]",
        "the API changed: /v2/orders now needs a cursor",
    ]
