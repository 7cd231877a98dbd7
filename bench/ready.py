"""Imported into bench worker subprocesses (``celery worker --include bench.ready``).

When the worker is consuming, it touches the file named by ``BENCH_READY_FILE``,
so the benchmark knows when to start its clock without raising the worker's
log level (INFO logs two lines per task, which would slow the per-event baseline).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery.signals import worker_ready

READY_FILE_ENV = "BENCH_READY_FILE"


@worker_ready.connect
def _touch_ready_file(**_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).write_text(str(os.getpid()))
