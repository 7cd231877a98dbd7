"""``python -m cli report``: the summary tables for one tenant and range."""

from __future__ import annotations

from datetime import datetime

import click

from cli.rollups import cost_command, summary_command, top_users_command, with_range

REPORT_TOP_USERS = 10


@click.command("report")
@with_range
@click.pass_context
def report_command(ctx: click.Context, tenant: str, start: datetime | None, end: datetime | None) -> None:
    """Per-feature calls, errors, tokens and latency percentiles, the cost per feature, then the top users."""
    ctx.invoke(summary_command, tenant=tenant, start=start, end=end)
    click.echo()
    ctx.invoke(
        cost_command,
        tenant=tenant,
        start=start,
        end=end,
        group="feature",
        feature=None,
        model=None,
        limit=REPORT_TOP_USERS,
    )
    click.echo()
    ctx.invoke(top_users_command, tenant=tenant, start=start, end=end, limit=REPORT_TOP_USERS, feature=None)
