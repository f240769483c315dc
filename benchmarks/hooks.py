"""How long a Claude Code hook makes Claude Code wait, against ``python -c pass``.

Claude Code runs ``ccc hook user-prompt-submit`` before every prompt and
``ccc hook stop`` at the end of every turn, and waits for each. This starts a
real ``ccc-statusd`` in a temp dir with two agents, then runs, in turn, the
hook (as the container's agent: ``CCC_SOCKET`` and ``CCC_CREDENTIAL`` set) and
``python -c pass`` on the same interpreter, and prints the medians and their
ratio. Target: at most 4x ``python -c pass``.

    python -m benchmarks.hooks [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 4.0  # a hook may take at most this many times python -c pass
BIN = Path(sys.executable).parent


def _wall(command: list[str], env: dict[str, str], stdin: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, input=stdin, capture_output=True, text=True, check=True)
    return time.perf_counter() - started


def measure(runs: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="ccc-hooks-", dir="/tmp"))
    # Nothing of the caller's CCC_* environment: every command talks to this relay.
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CCC_")}
    env = {**clean, "CCC_CACHE_DIR": str(root)}
    start = [str(BIN / "ccc-statusd"), "start"] + (["--allow-root"] if os.geteuid() == 0 else [])
    relay = subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        socket_path = subprocess.run(
            [str(BIN / "ccc-statusd"), "path", "--socket"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        deadline = time.monotonic() + 10
        while not Path(socket_path).exists():
            if time.monotonic() > deadline or relay.poll() is not None:
                raise RuntimeError("ccc-statusd did not start")
            time.sleep(0.05)
        ccc = str(BIN / "ccc")
        for args in (["agent", "add", "alice"], ["agent", "add", "bob"], ["allow", "alice", "bob"]):
            subprocess.run([ccc, *args], env=env, capture_output=True, check=True)
        agent = {**env, "CCC_SOCKET": socket_path,
                 "CCC_CREDENTIAL": str(root / "credentials" / "bob.cred")}  # fmt: skip
        # The interpreter the hook itself runs on: a pyenv shim or a wrapper in
        # PATH would make the yardstick slow and the ratio flattering.
        python = sys.executable
        times: dict[str, list[float]] = {"user-prompt-submit": [], "stop": [], "pass": []}
        for _ in range(runs):
            # One message waits before each prompt, as in a conversation.
            subprocess.run([ccc, "--as", "alice", "send", "bob", "the API changed"],
                           env=env, capture_output=True, check=True)  # fmt: skip
            times["pass"].append(_wall([python, "-c", "pass"], env, ""))
            times["user-prompt-submit"].append(
                _wall([ccc, "hook", "user-prompt-submit"], agent, '{"prompt": "next"}')
            )
            times["pass"].append(_wall([python, "-c", "pass"], env, ""))
            times["stop"].append(_wall([ccc, "hook", "stop"], agent, '{"stop_hook_active": false}'))
        return {name: statistics.median(values) for name, values in times.items()}
    finally:
        relay.terminate()
        relay.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (median)")
    args = parser.parse_args()
    medians = measure(args.runs)
    base = medians["pass"]
    print(f"python -c pass: {base * 1000:.1f} ms (median of {2 * args.runs})")
    worst = 0.0
    for hook in ("user-prompt-submit", "stop"):
        ratio = medians[hook] / base
        worst = max(worst, ratio)
        print(f"ccc hook {hook}: {medians[hook] * 1000:.1f} ms = {ratio:.2f}x python -c pass")
    verdict = "met" if worst <= TARGET else "not met"
    print(f"[{verdict}] a hook takes at most {TARGET:g}x python -c pass: worst {worst:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
