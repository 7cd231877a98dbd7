"""``python -m cli alerts ...``: a tenant's alert rules (list, add, delete) and their history of state changes.

Operators run the CLI, so it adds every kind of rule, ``ingest_health`` (the
whole pipeline) included. Bad input names the option at fault; names and
tenants are printed with their control characters escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import click

from alerts.rules import MAX_WINDOW_MINUTES, DuplicateRuleName, RuleError, add_rule, delete_rule, history, list_rules
from alerts.rules import parse_rule as parse
from cli import engines
from models.alert import INGEST_METRICS, RULE_KINDS
from monitoring.escape import escape
from schema.event import MAX_INT32, MAX_TENANT_ID_LEN

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_HISTORY = 50
MAX_HISTORY = 1000


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime(TIME_FORMAT)


def _n(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.normalize():f}"


def _tenant(tenant_id: str) -> str:
    if not 0 < len(tenant_id) <= MAX_TENANT_ID_LEN or "\x00" in tenant_id:
        raise click.BadParameter(f"must be 1..{MAX_TENANT_ID_LEN} characters, without NUL", param_hint="--tenant")
    return tenant_id


@click.group("alerts")
def alerts() -> None:
    """Alert rules on cost, errors, latency and ingest health, and what they recorded."""


@alerts.group("rules")
def rules() -> None:
    """A tenant's alert rules."""


@rules.command("list")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose rules to list.")
def list_command(tenant_id: str) -> None:
    """Id, kind, scope, thresholds, state (since, UTC) and last value of each rule."""
    with engines.engine().connect() as conn:
        entries = list_rules(conn, _tenant(tenant_id))
    if not entries:
        click.echo(f"no alert rules for tenant {escape(tenant_id)}")
        return
    click.echo(
        f"{'id':<8}{'kind':<15}{'warning':>12}{'critical':>12}  {'state':<10}{'since':<21}{'value':<14}name / scope"
    )
    for entry in entries:
        r = entry.rule
        scope = ", ".join(f"{k}={escape(v)}" for k, v in (("feature", r.feature), ("model", r.model),
                                                          ("metric", r.metric)) if v)  # fmt: skip
        state = (entry.state or "new") + ("" if r.enabled else " (off)")
        click.echo(f"{r.id:<8}{r.kind:<15}{_n(r.warning_threshold):>12}{_n(r.critical_threshold):>12}  {state:<10}"
                   f"{_when(entry.since):<21}{_n(entry.value):<14}{escape(r.name)}{f' [{scope}]' if scope else ''}")  # fmt: skip


@rules.command("add")
@click.option("--tenant", "tenant_id", required=True, help="The tenant the rule watches.")
@click.option("--name", required=True, help="Unique within the tenant.")
@click.option("--kind", type=click.Choice(RULE_KINDS), required=True, help="What is measured.")
@click.option("--warning-threshold", required=True, help="USD, ratio, fraction, ms or the metric's unit.")
@click.option("--critical-threshold", required=True, help="At or above the warning one (at or below for a horizon).")
@click.option("--feature", default=None, help="Only this feature.")
@click.option("--model", default=None, help="Only this model (budgets and cost_spike).")
@click.option("--metric", type=click.Choice(INGEST_METRICS), default=None, help="ingest_health: what to watch.")
@click.option(
    "--window-minutes",
    type=click.IntRange(1, MAX_WINDOW_MINUTES),
    default=None,
    help="error_rate, latency_p95, dead_letters_added: minutes back from each evaluation.",
)
@click.option("--min-calls", type=click.IntRange(0, MAX_INT32), default=None, help="Fewer calls never fire.")
@click.option("--min-amount-usd", default=None, help="cost_spike: a cheaper last hour never fires.")
@click.option("--disabled", is_flag=True, help="Store it without evaluating it.")  # fmt: skip
def add_command(tenant_id: str, disabled: bool, **fields: str | int | None) -> None:
    """Add a rule; the next evaluation cycle (ALERT_EVALUATE_INTERVAL_S) takes it."""
    raw = {name: value for name, value in fields.items() if value is not None}
    try:
        rule = parse({**raw, "enabled": not disabled})
    except RuleError as exc:
        raise click.BadParameter(escape(exc.message), param_hint=f"--{exc.field.replace('_', '-')}") from None
    try:
        with engines.engine().begin() as conn:
            stored = add_rule(conn, _tenant(tenant_id), rule, created_by="cli")
    except DuplicateRuleName as exc:
        raise click.BadParameter(escape(str(exc).removeprefix("name: ")), param_hint="--name") from None
    click.echo(f"added alert rule {stored.id} ({stored.kind}) for tenant {escape(tenant_id)}: {escape(stored.name)}")


@rules.command("delete")
@click.option("--tenant", "tenant_id", required=True, help="The rule's tenant.")
@click.argument("rule_id", type=click.IntRange(min=1))
def delete_command(tenant_id: str, rule_id: int) -> None:
    """Delete a rule and its state; its history stays."""
    with engines.engine().begin() as conn:
        deleted = delete_rule(conn, _tenant(tenant_id), rule_id)
    if not deleted:
        raise click.ClickException(f"tenant {escape(tenant_id)} has no alert rule {rule_id} (see: alerts rules list)")
    click.echo(f"deleted alert rule {rule_id}")


@alerts.command("history")
@click.option("--tenant", "tenant_id", required=True, help="The tenant whose state changes to show.")
@click.option("--rule", "rule_id", type=click.IntRange(min=1), default=None, help="Only this rule.")
@click.option("--limit", type=click.IntRange(1, MAX_HISTORY), default=DEFAULT_HISTORY, show_default=True)
def history_command(tenant_id: str, rule_id: int | None, limit: int) -> None:
    """State changes, newest first: when (UTC), rule, from -> to, value and the threshold crossed."""
    with engines.engine().connect() as conn:
        rows = history(conn, _tenant(tenant_id), rule_id=rule_id, limit=limit)
    if not rows:
        click.echo("no state changes")
        return
    click.echo(f"{'at':<21}{'rule':<8}{'change':<22}{'value':>14}{'threshold':>14}  name")
    for row in rows:
        change = f"{row.from_state} -> {row.to_state}"
        click.echo(f"{_when(row.at):<21}{row.rule_id:<8}{change:<22}{_n(row.value):>14}{_n(row.threshold):>14}  "
                   f"{escape(row.rule_name)}")  # fmt: skip
