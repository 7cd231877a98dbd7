"""The fault-injection suite: ``pytest -m faults`` (also part of the default run).

Each test is one scenario of devtools/faults/scenarios.py (the same code as
``python -m bench.faults``): its own PostgreSQL and broker on spare ports,
a steady load from a real producer process, real worker processes, one fault,
and a reconciliation that must end with ``lost=0 duplicated=0``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devtools.faults.scenarios import SCENARIOS, Options, run_scenario
from devtools.servers import PG_BIN, RABBITMQ_SBIN

pytestmark = pytest.mark.faults

MISSING = [what for what, present in (
    (f"PostgreSQL binaries in {PG_BIN}", (PG_BIN / "initdb").exists()),
    (f"rabbitmq-server in {RABBITMQ_SBIN}", (RABBITMQ_SBIN / "rabbitmq-server").exists()),
    ("redis-server", shutil.which("redis-server") is not None),
) if not present]  # fmt: skip


@pytest.mark.skipif(bool(MISSING), reason=f"fault suite needs {', '.join(MISSING)}")
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_loses_nothing_and_duplicates_nothing(name: str, tmp_path: Path) -> None:
    lines: list[str] = []
    outcome = run_scenario(name, Options(workdir=tmp_path, log=lines.append))
    print(outcome.explain())  # shown with -s, and in the report of a failure
    assert outcome.passed, "\n".join([outcome.explain(), *lines])
