"""pyproject.toml: the wheel holds what its entry points import, and ``analytics`` is ``python -m cli``.

Cheap checks, no build: the package list is explicit (tests/ and bench/ stay
out of the wheel), so a new top-level package or subpackage that the CLI, the
web app or the worker imports must be added there, and a library they import
must be a declared dependency. The real ``pip install .`` into a fresh
virtualenv is a manual check (README, "Install as a package").
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib.metadata import EntryPoint, packages_distributions
from pathlib import Path
from typing import Any

import cli.main

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = REPO_ROOT / "pyproject.toml"
SCRIPT_NAME = "analytics"
# Packaged for what the CLI imports from it; its runner (`python -m demo`, ./run) needs a checkout.
CHECKOUT_ONLY_PACKAGES = {"demo"}
HELP_TIMEOUT_S = 60


@cache
def pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def packages() -> set[str]:
    return set(pyproject()["tool"]["setuptools"]["packages"])


def py_modules() -> set[str]:
    return set(pyproject()["tool"]["setuptools"].get("py-modules", []))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def packaged_files() -> dict[str, Path]:
    """Module name -> source file, for every module the wheel holds."""
    found = {name: REPO_ROOT / f"{name}.py" for name in py_modules()}
    for package in packages():
        for path in (REPO_ROOT / package.replace(".", "/")).glob("*.py"):
            found[module_name(path)] = path
    return found


def first_party_tops() -> set[str]:
    """Top-level names that this checkout itself provides (packages, namespace folders, modules)."""
    tops = {p.stem for p in REPO_ROOT.glob("*.py")}
    tops |= {p.parent.name for p in REPO_ROOT.glob("*/*.py")}
    return tops


def imports_of(path: Path) -> Iterator[str]:
    """Absolute module names ``path`` imports, at any depth (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_closure() -> tuple[set[str], set[str]]:
    """(first-party modules, third-party top-level names) reached from the wheel's entry points.

    Roots: every packaged module outside CHECKOUT_ONLY_PACKAGES (the CLI, the web
    app, the worker, beat, celeryconfig, the migrations).
    """
    files = packaged_files()
    first_party = first_party_tops()
    roots = [name for name in files if name.split(".")[0] not in CHECKOUT_ONLY_PACKAGES]
    seen: set[str] = set()
    third_party: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = files.get(name)
        if path is None:
            continue  # reported by the caller (not packaged), or an attribute imported by name
        for imported in imports_of(path):
            top = imported.split(".")[0]
            if top in first_party:
                todo.append(imported)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return {name for name in seen if _is_module(name)}, third_party


def _is_module(name: str) -> bool:
    """A module or package of this checkout (not ``pkg.attribute`` from ``from pkg import attribute``)."""
    path = REPO_ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir()


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_console_script_is_the_cli_entry_point() -> None:
    target = pyproject()["project"]["scripts"][SCRIPT_NAME]
    assert EntryPoint(SCRIPT_NAME, target, "console_scripts").load() is cli.main.main
    # `python -m cli` calls the same function.
    main_module = ast.parse((REPO_ROOT / "cli" / "__main__.py").read_text())
    assert any(
        isinstance(node, ast.ImportFrom) and node.module == "cli.main" and any(a.name == "main" for a in node.names)
        for node in ast.walk(main_module)
    )


def test_the_console_script_answers_help_for_a_subcommand() -> None:
    """What the generated ``analytics`` script does, run from outside the checkout's folder."""
    target = pyproject()["project"]["scripts"][SCRIPT_NAME]
    code = (
        "import sys; from importlib.metadata import EntryPoint; "
        f"sys.argv = [{SCRIPT_NAME!r}, 'partitions', 'list', '--help']; "
        f"sys.exit(EntryPoint({SCRIPT_NAME!r}, {target!r}, 'console_scripts').load()())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert f"Usage: {SCRIPT_NAME} partitions list" in done.stdout  # the name the user typed
    assert "monthly table" in done.stdout


def test_every_module_the_entry_points_import_is_packaged() -> None:
    reached, _ = import_closure()
    packaged = set(packaged_files())
    missing = sorted(reached - packaged)
    assert not missing, f"add their packages to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_folder_of_a_packaged_package_is_packaged() -> None:
    """setuptools' explicit list is not recursive: a subpackage must be named."""
    declared = packages()
    for package in declared:
        for sub in (REPO_ROOT / package.replace(".", "/")).iterdir():
            if sub.is_dir() and any(sub.glob("*.py")):
                assert module_name(sub / "__init__.py") in declared, f"{sub.relative_to(REPO_ROOT)} is not packaged"


def test_every_library_the_entry_points_import_is_a_dependency() -> None:
    _, third_party = import_closure()
    declared = {requirement_name(r) for r in pyproject()["project"]["dependencies"]}
    distributions = packages_distributions()
    undeclared = {}
    for top in sorted(third_party):
        names = {requirement_name(d) for d in distributions.get(top, [])}
        if not names & declared:
            undeclared[top] = sorted(names) or "not installed"
    assert not undeclared, f"add to [project] dependencies in pyproject.toml: {undeclared}"


def test_the_web_app_static_files_are_package_data() -> None:
    web = REPO_ROOT / "web"
    patterns = pyproject()["tool"]["setuptools"]["package-data"]["web"]
    shipped = {path for pattern in patterns for path in web.glob(pattern) if path.is_file()}
    needed = {path for path in (web / "static").rglob("*") if path.is_file()}
    assert needed, "web/static is empty?"
    assert needed <= shipped, sorted(str(p.relative_to(web)) for p in needed - shipped)
