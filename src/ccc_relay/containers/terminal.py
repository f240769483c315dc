"""A sandbox started from a terminal gets a terminal of its own: a pseudo-terminal.

The rule this module owns: a sandbox never holds the user's terminal. Its
session's controlling terminal is the slave side of a new pty, and
``ccc run`` relays bytes between the user's terminal (in raw mode) and the
pty's master. So job control and Ctrl-C work inside (the pty's line
discipline signals the sandbox's foreground job, not ``ccc run``), while
``TIOCSTI`` from inside can reach only the sandbox's own pty, never the
user's shell. The window size follows the user's (SIGWINCH), the exit status
is the sandbox's, and the user's terminal settings come back on every way out.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import signal
import subprocess
import termios
import time
import tty
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType

_CHUNK = 65536
# How long a terminal's answer to a query may take to arrive after the sandbox ends.
_ANSWER_GRACE = 0.25  # a local terminal answers in well under that; over ssh, about a round trip


class TerminalError(RuntimeError):
    """The sandbox's terminal could not be set up; the message says why."""


def run_in_pty(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    pass_fds: Sequence[int] = (),
    stdin: int = 0,
    stdout: int = 1,
) -> int:
    """Run ``argv`` in a new session whose controlling terminal is a new pty, relaying
    ``stdin`` (a terminal, put in raw mode meanwhile) and ``stdout`` to it.

    Returns the exit status (128 + N for a death by signal N). SIGTERM and SIGHUP
    to this process end the sandbox (its pty hangs up) and return 128 + N.
    Raises TerminalError when the pty or the process cannot be made.
    """
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise TerminalError(f"cannot open a pseudo-terminal: {exc.strerror}") from None
    try:
        with contextlib.suppress(termios.error):
            # The sandbox's terminal starts as the user's: same modes, same size.
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(stdin))
        _copy_size(stdin, master)
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=dict(env),
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                preexec_fn=_take_terminal,  # one ioctl, after setsid
            )
        except OSError as exc:
            raise TerminalError(f"cannot run {argv[0]}: {exc.strerror}") from None
    finally:
        os.close(slave)
    try:
        return _relay(proc, master, stdin, stdout)
    finally:
        os.close(master)  # a hang-up for whatever is still in the sandbox's session
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _take_terminal() -> None:
    # In the child, after setsid(): stdin (the pty's slave) becomes the new
    # session's controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _relay(proc: subprocess.Popen[bytes], master: int, stdin: int, stdout: int) -> int:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    pending: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)
        with contextlib.suppress(OSError):
            os.write(wake_w, b"\0")

    handled = (signal.SIGWINCH, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    selector = selectors.DefaultSelector()
    try:
        with _raw(stdin):
            selector.register(master, selectors.EVENT_READ)
            selector.register(stdin, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
            _pump(selector, master, stdin, stdout, wake_r, pending)
    except _Stopped as stopped:
        return 128 + stopped.signum
    finally:
        selector.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_r)
        os.close(wake_w)
    code = proc.wait()
    return 128 - code if code < 0 else code


def _pump(
    selector: selectors.BaseSelector,
    master: int,
    stdin: int,
    stdout: int,
    wake_r: int,
    pending: list[int],
) -> None:
    # Until the sandbox's side of the pty is closed by its last process.
    while True:
        for key, _ in selector.select():
            if key.fd == wake_r:
                os.read(wake_r, 512)
                while pending:
                    signum = pending.pop(0)
                    if signum != signal.SIGWINCH:
                        raise _Stopped(signum)
                    _copy_size(stdin, master)
            elif key.fd == stdin:
                data = _read(stdin)
                if data:
                    _write_all(master, data)
                else:
                    # The user's input ended (a closed terminal): the sandbox
                    # gets end-of-file once, as from a keyboard's Ctrl-D.
                    selector.unregister(stdin)
                    _write_all(master, b"\x04")
            else:
                data = _read(master)
                if not data:
                    return
                _write_all(stdout, data)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _CHUNK)
    except OSError as exc:
        if exc.errno == errno.EIO:  # Linux: the slave has no process left
            return b""
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # the sandbox's side is gone; its output is drained elsewhere
            raise


def _copy_size(source: int, target: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode, and its settings back however the block ends."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield  # not a terminal after all: nothing to set or restore
        return
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        # A sandbox may ask the terminal something (a title report, DECRQSS) and
        # exit at once: the answer would reach the user's shell as typed input.
        # Give it a moment to arrive, then drop unread input with the restore.
        time.sleep(_ANSWER_GRACE)
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
