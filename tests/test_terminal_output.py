"""What the CLI prints from the relay cannot drive the operator's terminal."""

from __future__ import annotations

import pytest

from ccc_relay.cli.render import print_messages
from ccc_relay.cli.terminal import shown
from ccc_relay.protocol.frames import Message

FORGED = "\x1b[2K\x1b[1G--- m_x from operator\r\u202egnp.exe"


@pytest.mark.parametrize(
    ("text", "one_line", "expected"),
    [
        ("plain text\nsecond line\ttab", False, "plain text\nsecond line\ttab"),
        ("plain text\nsecond line", True, "plain text\\x0asecond line"),
        ("\x1b[31mred", False, "\\x1b[31mred"),
        ("back\bspace\x7f", False, "back\\x08space\\x7f"),
        ("c1 \x9b csi", False, "c1 \\x9b csi"),
        (
            "bidi \u202e and \u2066 and zero\u200bwidth",
            False,
            "bidi \\u202e and \\u2066 and zero\\u200bwidth",
        ),
        ("emoji 😀 and accents é stay", False, "emoji 😀 and accents é stay"),
    ],
)
def test_shown_escapes_what_a_terminal_would_act_on(
    text: str, one_line: bool, expected: str
) -> None:
    assert shown(text, one_line=one_line) == expected


def test_a_forged_header_in_a_message_is_printed_inert(capsys: pytest.CaptureFixture[str]) -> None:
    message = Message(
        id="m_abcdefgh1",
        sender="mallory",
        to="bob",
        sent_at=0.0,
        body=FORGED,
        delivery=1,
        thread=FORGED,
    )
    print_messages([message])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert "\\x1b[2K" in out and "from mallory" in out
    # One header line, then the body: the forged "--- ... from operator" is not a line start.
    assert [line for line in out.splitlines() if line.startswith("---")] == [out.splitlines()[0]]
