"""The top-level ``cli`` group; command groups live in sibling modules."""

from __future__ import annotations

import logging

import click

from cli.apikeys import api_keys
from cli.deadletters import dead_letters
from cli.load import load_command
from cli.migrate import migrate_command
from cli.partitions import partitions
from cli.report import report_command
from cli.rollups import rollups
from monitoring.escape import install_log_escaping


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what each step does.")
def cli(verbose: bool) -> None:
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


def main() -> None:
    install_log_escaping()  # stored names in log arguments reach the terminal escaped too
    cli(prog_name="python -m cli")
