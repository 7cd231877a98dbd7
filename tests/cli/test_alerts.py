"""``analytics alerts``: rules add (bad input names the option), list with their state, delete; the history."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

from click.testing import CliRunner
from sqlalchemy import Engine

from alerts.evaluate import record
from alerts.rules import get_rule
from cli.main import cli
from config import Settings


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_add_list_history_delete(engine: Engine, tenant: str, database_url: str) -> None:
    code, out = run("alerts", "rules", "add", "--tenant", tenant, "--name", "p95 search", "--kind", "latency_p95",
                    "--feature", "search", "--window-minutes", "15", "--min-calls", "20",
                    "--warning-threshold", "1500", "--critical-threshold", "4000")  # fmt: skip
    assert code == 0, out
    added = re.match(r"added alert rule (\d+) \(latency_p95\) for tenant ", out)
    assert added is not None, out
    rule_id = int(added.group(1))
    code, out = run("alerts", "rules", "add", "--tenant", tenant, "--name", "lag", "--kind", "ingest_health",
                    "--metric", "rollup_lag_s", "--warning-threshold", "60", "--critical-threshold", "300")  # fmt: skip
    assert code == 0, out  # operators add ingest-health rules
    code, out = run("alerts", "rules", "list", "--tenant", tenant)
    assert code == 0 and "p95 search [feature=search]" in out and "lag [metric=rollup_lag_s]" in out
    assert re.search(rf"^{rule_id}\s+latency_p95\s+1500\s+4000\s+new\s", out, re.MULTILINE), out

    with engine.begin() as conn:
        rule = get_rule(conn, tenant, rule_id)
        assert rule is not None
        record(conn, rule, Decimal("4200.5"), Settings(), datetime.now(UTC))
    code, out = run("alerts", "rules", "list", "--tenant", tenant)
    assert re.search(rf"^{rule_id}\s+latency_p95\s+1500\s+4000\s+critical\s.*4200\.5\s", out, re.MULTILINE), out
    code, out = run("alerts", "history", "--tenant", tenant, "--rule", str(rule_id))
    assert code == 0 and re.search(r"ok -> critical\s+4200\.5\s+4000\s+p95 search", out), out

    code, out = run("alerts", "rules", "delete", "--tenant", tenant, str(rule_id))
    assert (code, out.strip()) == (0, f"deleted alert rule {rule_id}")
    code, out = run("alerts", "rules", "delete", "--tenant", tenant, str(rule_id))
    assert code == 1 and "has no alert rule" in out
    assert "p95 search" not in run("alerts", "rules", "list", "--tenant", tenant)[1]
    assert "ok -> critical" in run("alerts", "history", "--tenant", tenant)[1]  # the history outlives the rule


def test_bad_input_names_the_option(tenant: str, database_url: str) -> None:
    base = ("alerts", "rules", "add", "--tenant", tenant, "--name", "b")
    cases = {
        ("--kind", "budget_day", "--warning-threshold", "10", "--critical-threshold", "5"): "--critical-threshold",
        ("--kind", "budget_day", "--warning-threshold", "ten", "--critical-threshold", "5"): "--warning-threshold",
        ("--kind", "error_rate", "--warning-threshold", "0.1", "--critical-threshold", "0.2"): "--window-minutes",
        ("--kind", "cost_spike", "--warning-threshold", "2", "--critical-threshold", "5"): "--min-amount-usd",
        ("--kind", "budget_day", "--metric", "rollup_lag_s", "--warning-threshold", "1",
         "--critical-threshold", "2"): "--metric",
    }  # fmt: skip
    for args, option in cases.items():
        code, out = run(*base, *args)
        assert code == 2 and option in out, (args, out)
    ok = ("--kind", "budget_day", "--warning-threshold", "1", "--critical-threshold", "2")
    assert run(*base, *ok)[0] == 0
    code, out = run(*base, *ok)
    assert code == 2 and "--name" in out and "already has a rule named" in out
