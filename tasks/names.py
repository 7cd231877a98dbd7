"""Every Celery task's name, defined once.

Imports nothing, so that processes that only send tasks (the producer in a
web process, celeryconfig, storage.replay) name them without importing the
Celery application or the worker's code.
"""

from __future__ import annotations

INGEST_WRITE_BATCH = "ingest.write_batch"
PARTITIONS_ENSURE_AHEAD = "partitions.ensure_ahead"
PARTITIONS_APPLY_RETENTION = "partitions.apply_retention"
ROLLUPS_RUN = "rollups.run"
ROLLUPS_REBUILD = "rollups.rebuild"
PRICES_REFRESH = "prices.refresh"
ALERTS_EVALUATE = "alerts.evaluate"
WEBHOOKS_DISPATCH = "webhooks.dispatch"
WEBHOOKS_DELIVER = "webhooks.deliver"

# Route patterns (celeryconfig.task_routes): every task of a domain.
PARTITIONS_TASKS = "partitions.*"
ROLLUPS_TASKS = "rollups.*"
PRICES_TASKS = "prices.*"
ALERTS_TASKS = "alerts.*"
WEBHOOKS_TASKS = "webhooks.*"
