"""The layers hold: the relay core and the protocol session do no I/O and read no clock.

* Importing them (in a fresh interpreter) loads no asyncio, socket or sqlite3,
  and none of the relay's I/O packages (daemon, client, cli, the SQLite store).
  Note: ``_socket`` (the C module, not ``socket``) does get loaded: msgspec
  imports typing_extensions, which does ``import _socket``. Nothing of ours.
* No module under ``core/`` or ``protocol/`` imports ``time`` or ``datetime``
  or calls a clock: time is passed in as ``now``.
* The package has no import cycles (``/work/shared/tools/import_cycles.py``).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ccc_relay"
PURE = ("ccc_relay.core.relay", "ccc_relay.protocol.session", "ccc_relay.core.effects")
FORBIDDEN_MODULES = ("asyncio", "socket", "sqlite3", "_sqlite3", "selectors", "ssl")
FORBIDDEN_OURS = ("ccc_relay.daemon", "ccc_relay.client", "ccc_relay.cli", "ccc_relay.store.sqlite")
IMPORT_CYCLES = Path("/work/shared/tools/import_cycles.py")


def loaded_after_importing(modules: tuple[str, ...]) -> list[str]:
    script = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout)
    return loaded


def matching(loaded: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(m == n or m.startswith(n + ".") for n in names)]


def test_the_core_and_the_session_load_no_io_modules() -> None:
    loaded = loaded_after_importing(PURE)
    assert set(PURE) <= set(loaded)  # the import did happen
    assert matching(loaded, FORBIDDEN_MODULES) == []
    assert matching(loaded, FORBIDDEN_OURS) == []


def test_the_check_sees_an_io_module_when_one_is_loaded() -> None:
    loaded = loaded_after_importing(("ccc_relay.core.relay", "ccc_relay.daemon.shell"))
    assert "asyncio" in matching(loaded, FORBIDDEN_MODULES)
    assert "ccc_relay.daemon.shell" in matching(loaded, FORBIDDEN_OURS)


# --- no clock in core/ or protocol/ -----------------------------------------------------------

CLOCK_MODULES = {"time", "datetime"}
CLOCK_CALLS = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "monotonic_ns"}
CLOCK_WORDS = ("monotonic", "perf_counter", "process_time")


def clock_uses(source: str) -> list[str]:
    """Every way ``source`` imports a clock module or calls a clock, as 'line: what'."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in CLOCK_MODULES:
                    found.append(f"{line}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in CLOCK_MODULES:
                found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute):
            owner = node.value
            owner_name = owner.id if isinstance(owner, ast.Name) else None
            if owner_name in {"time", "datetime", "date"} and node.attr in CLOCK_CALLS:
                found.append(f"{line}: {owner_name}.{node.attr}")
            elif any(word in node.attr for word in CLOCK_WORDS):
                found.append(f"{line}: .{node.attr}")
        elif isinstance(node, ast.Name) and any(word in node.id for word in CLOCK_WORDS):
            found.append(f"{line}: {node.id}")
    return found


def pure_sources() -> list[Path]:
    paths = sorted([*(PACKAGE / "core").rglob("*.py"), *(PACKAGE / "protocol").rglob("*.py")])
    assert any(p.name == "relay.py" for p in paths) and any(p.name == "session.py" for p in paths)
    return paths


@pytest.mark.parametrize("path", pure_sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_clock_in_core_or_protocol(path: Path) -> None:
    assert clock_uses(path.read_text()) == [], path


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import time as t",
        "import datetime",
        "from time import monotonic",
        "from time import time as now",
        "from datetime import datetime",
        "x = time.time()",
        "x = time.monotonic()",
        "x = datetime.now()",
        "x = datetime.utcnow()",
        "x = date.today()",
        "x = loop.monotonic_clock()",
        "x = perf_counter()",
        "x = monotonic()",
    ],
)
def test_the_clock_scan_finds_each_form(source: str) -> None:
    assert clock_uses(source) != []


def test_the_clock_scan_lets_now_passed_in_through() -> None:
    assert clock_uses("def f(now: float) -> float:\n    return now + session.expires\n") == []


# --- import cycles --------------------------------------------------------------------------


def test_the_package_has_no_import_cycles() -> None:
    if not IMPORT_CYCLES.exists():
        pytest.skip(f"{IMPORT_CYCLES} is not on this machine")
    result = subprocess.run(
        [sys.executable, str(IMPORT_CYCLES), "src", "ccc_relay"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1] == "cycles: 0", result.stdout
