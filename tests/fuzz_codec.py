"""A coverage-guided fuzz harness for the wire codec (``protocol/codec.py``).

``check(data)`` is the property every input must keep; ``tests/test_fuzz_codec.py``
runs it over a corpus of hostile inputs, under Hypothesis, and under atheris
(libFuzzer) for a bounded time. Run it longer by hand::

    .venv/bin/python -m tests.fuzz_codec -max_total_time=600 /tmp/codec-corpus

(any libFuzzer flag works: ``-runs=N``, ``-jobs=2``, ``-dict=...``; a crashing
input is written to ``crash-<sha1>`` in the working directory and reproduces
with ``.venv/bin/python -m tests.fuzz_codec crash-<sha1>``).

The properties, for any bytes:

* ``decode_client_frame`` and ``decode_relay_frame`` return a frame or raise
  ``ProtocolError`` with code ``invalid`` (not fatal); nothing else, ever;
* a frame they return encodes (``encode``) to one line that decodes to an equal
  frame: what the relay takes in, it can write out;
* ``salvage_seq`` never raises and returns None or a positive int;
* ``LineBuffer`` with a cap, fed the bytes cut anywhere, returns exactly the
  complete lines, in order, and keeps exactly the unfinished rest -- or raises
  ``FrameTooLarge`` (``too_large``, fatal), and then only because a line, or the
  unfinished rest at the end of a piece, was longer than the cap.
"""

from __future__ import annotations

import itertools
import sys

from ccc_relay.protocol.codec import (
    FrameTooLarge,
    LineBuffer,
    decode_client_frame,
    decode_relay_frame,
    encode,
)
from ccc_relay.protocol.errors import ErrorCode, ProtocolError
from ccc_relay.protocol.session import salvage_seq


def check_decoders(data: bytes) -> None:
    for decode in (decode_client_frame, decode_relay_frame):
        try:
            frame = decode(data)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.INVALID, exc
            assert not exc.fatal
            continue
        line = encode(frame)
        assert line.endswith(b"\n") and b"\n" not in line[:-1], line
        again = decode(line[:-1])
        assert again == frame, (data, frame, again)
    seq = salvage_seq(data)
    assert seq is None or (type(seq) is int and seq > 0), seq


def check_line_buffer(data: bytes, cap: int, cuts: list[int]) -> None:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    buffer = LineBuffer(cap)
    lines: list[bytes] = []
    too_long = False
    for start, end in itertools.pairwise(points):
        # The oracle: a line completed by this piece, or the rest it leaves, past the cap.
        done = data[:end].split(b"\n")
        too_long = any(len(line) > cap for line in done[:-1]) or len(done[-1]) > cap
        try:
            lines += buffer.feed(data[start:end])
        except FrameTooLarge as exc:
            assert exc.code is ErrorCode.TOO_LARGE and exc.fatal
            assert too_long, (data, cap, points)
            return
        assert not too_long, (data, cap, points)
    *complete, rest = data.split(b"\n")
    assert lines == complete
    assert buffer.pending == len(rest)


def check(data: bytes) -> None:
    """Every property above, for one input (the first bytes also pick a cap and cuts)."""
    check_decoders(data)
    cap = 1 + (data[0] if data else 0) * 3
    cuts = list(data[1:5])
    check_line_buffer(data, cap, cuts)


def main(argv: list[str]) -> None:  # pragma: no cover - runs under atheris
    import atheris

    def one_input(data: bytes) -> None:
        check(data)

    # Coverage of the Python code under test (instrumenting everything loaded
    # costs seconds at start); msgspec's C decoder is not instrumented.
    from ccc_relay.protocol import codec, session

    for function in (
        codec._decode,
        codec.LineBuffer.feed,
        codec.encode,
        session.salvage_seq,
        check_decoders,
        check_line_buffer,
    ):
        atheris.instrument_func(function)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv)
