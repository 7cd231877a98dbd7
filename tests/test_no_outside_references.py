"""Code explains itself: no product, bench or tooling file cites a document the repository does not hold.

"issue 12, finding 7", "the design notes" or "the brief" send a reader to text
they cannot open from a clone; the reason belongs in the docstring itself (or
in README.md / BENCHMARKS.md, which are here).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKED_SUFFIXES = {".py", ".js", ".html", ".css", ".mako", ".ini", ".toml"}
CHECKED_SCRIPTS = {"run", "test", "Procfile", ".ci/run", "scripts/setup", "scripts/local-services", "scripts/browser"}
UNCHECKED_TOP = {"tests"}  # tests may name the case they reproduce; code and tooling may not
OUTSIDE_REFERENCE = re.compile(
    r"\b(?:issues?|findings?)\s*#?\s*\d+"  # issue 12, finding 7, issue #3
    r"|\bdesign\s+(?:notes?|brief|card|doc)\b"
    r"|(?-i:\bDESIGN\b)"  # upper case: the file's name, not the word
    r"|\bthe\s+(?:project's\s+)?brief\b"
    r"|\b(?:the|an?)\s+issue's\b"
    r"|\bof\s+the\s+issue\b"
    r"|What it must show",
    re.IGNORECASE,
)


def checked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    files = []
    for name in listed:
        path = Path(name)
        if path.parts[0] in UNCHECKED_TOP or not (REPO_ROOT / path).is_file():
            continue
        if path.suffix in CHECKED_SUFFIXES or name in CHECKED_SCRIPTS:
            files.append(REPO_ROOT / path)
    return files


def test_the_checked_files_include_the_product_and_the_benchmarks() -> None:
    tops = {path.relative_to(REPO_ROOT).parts[0] for path in checked_files()}
    assert {"storage", "tasks", "web", "bench", "migrations"} <= tops


def test_no_file_cites_a_document_outside_the_repository() -> None:
    found = []
    for path in checked_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            match = OUTSIDE_REFERENCE.search(line)
            if match:
                found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {match.group(0)!r}")
    assert not found, "say the reason itself instead:\n" + "\n".join(found)


def test_the_pattern_catches_the_usual_forms() -> None:
    for cited in ("(issue 12)", "issue 12, finding 7", "design notes: ~900", "DESIGN: 500-900", "the project's brief"):
        assert OUTSIDE_REFERENCE.search(cited), cited
    for fine in ("issued at", "the key's issuer", "a design that keeps", "briefly"):
        assert not OUTSIDE_REFERENCE.search(fine), fine
