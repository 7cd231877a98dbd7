"""Fixtures of the migration tests: a scratch database of each test module's own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from devtools.scratch_db import ScratchDatabase, scratch_database

MODULE_PREFIX = "test_migration_"


@pytest.fixture
def scratch(request: pytest.FixtureRequest) -> Iterator[ScratchDatabase]:
    """An empty database (no revision) named after the test database and the module's revision
    (``test_migration_0007`` -> ``<test database>_m0007``), dropped afterwards."""
    base = make_url(os.environ["DATABASE_URL"])  # tests/conftest.py points it at the test database
    revision = request.path.stem.removeprefix(MODULE_PREFIX)
    url = base.set(database=f"{base.database}_m{revision}").render_as_string(hide_password=False)
    with scratch_database(url) as database:
        yield database
