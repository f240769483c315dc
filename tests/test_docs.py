"""The docs stay true: every test they cite exists, and CI runs the README's command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def cited() -> list[tuple[Path, str, str]]:
    found = []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            current = None
            for token in re.findall(r"tests/[\w/]+\.py|::\w+", line):
                if token.startswith("tests/"):
                    current = token
                    found.append((doc, current, ""))
                elif current is not None:
                    found.append((doc, current, token[2:]))
    return found


def test_every_cited_test_exists() -> None:
    missing = []
    for doc, path, name in cited():
        source = ROOT / path
        if not source.exists():
            missing.append(f"{doc.name}: {path}")
        elif name and not re.search(rf"def {name}\b|def {name}\w*", source.read_text()):
            missing.append(f"{doc.name}: {path}::{name}")
    assert not missing, missing


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    [test_line] = [line for line in first_block.splitlines() if line.startswith("./dev.sh test")]
    assert any(line.startswith("./dev.sh start") for line in first_block.splitlines())
    commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert commands == [test_line]  # the README's line, character for character
