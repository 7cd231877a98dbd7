"""The top-level ``cli`` group; command groups live in sibling modules.

Errors an operator causes (cli.errors) end the command with one line saying
what to do; ``--debug`` shows their traceback instead. With DATABASE_URL or
CELERY_BROKER_URL unset, ``main`` uses the embedded services that ``./run``
of this checkout is running, if any (demo.state), and says so
in one line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cli.alerts import alerts
from cli.apikeys import api_keys
from cli.deadletters import dead_letters
from cli.errors import DEBUG_HINT, OPERATOR_ERROR_TYPES, user_error
from cli.load import load_command
from cli.migrate import migrate_command
from cli.partitions import partitions
from cli.prices import prices
from cli.report import report_command
from cli.rollups import rollups
from cli.webhooks import webhooks
from config import get_settings
from demo.state import STATE_FILE, StateFileError, running_services
from monitoring.escape import install_log_escaping

PROG_NAME = "python -m cli"
SCRIPT_NAME = "analytics"  # the console script of pyproject.toml


def prog_name() -> str:
    """What the user typed: ``analytics`` when run as the console script, else ``python -m cli``."""
    return SCRIPT_NAME if Path(sys.argv[0]).name == SCRIPT_NAME else PROG_NAME


class OperatorErrors(click.Group):
    """A group that turns the errors cli.errors knows into one line (a ClickException), unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OPERATOR_ERROR_TYPES as exc:
            message = None if ctx.params.get("debug") else user_error(exc)
            if message is None:
                raise
            raise click.ClickException(f"{message} ({DEBUG_HINT})") from None


@click.group(cls=OperatorErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of one line.")
def cli(verbose: bool, debug: bool) -> None:
    """Operate the analytics pipeline (settings come from environment variables)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


cli.add_command(migrate_command)
cli.add_command(partitions)
cli.add_command(dead_letters)
cli.add_command(rollups)
cli.add_command(load_command)
cli.add_command(api_keys)
cli.add_command(report_command)
cli.add_command(prices)
cli.add_command(webhooks)
cli.add_command(alerts)


def use_embedded_services(state_file: Path) -> None:
    """Point the unset service variables at the embedded services of a live ``./run``; say so on stderr."""
    try:
        running = running_services(state_file)
    except StateFileError as exc:
        click.echo(f"{prog_name()}: ignoring {exc}", err=True)
        return
    if running is None:
        return
    taken = [name for name in running.urls if not os.environ.get(name)]
    if not taken:
        return
    for name in taken:
        os.environ[name] = running.urls[name]
    get_settings.cache_clear()
    click.echo(f"{prog_name()}: {' and '.join(taken)} unset: using the embedded services of ./run"
               f" (pid {running.pid})", err=True)  # fmt: skip


def main(args: Sequence[str] | None = None, state_file: Path = STATE_FILE) -> None:
    """``python -m cli`` and the ``analytics`` script; ``state_file`` is a seam for tests."""
    install_log_escaping()  # stored names in log arguments reach the terminal escaped too
    use_embedded_services(state_file)
    cli(args=args if args is not None else sys.argv[1:], prog_name=prog_name())
