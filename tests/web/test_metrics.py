"""/metrics: the worker's counters reach the web process (multiprocess dir); state read at scrape."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from devtools.processes import REPO_ROOT, port_open, spare_port, wait_for
from devtools.workers import celery_worker, describe
from storage.api_keys import create_key

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
EVENTS = 300


def sample(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_metrics_show_worker_counters_and_pipeline_state(engine: Engine, tmp_path: Path) -> None:
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "INGEST_QUEUE": queue, "CELERY_BROKER_URL": RABBITMQ,
           "PRODUCER_SPOOL_DIR": str(tmp_path / "spool"), "PRODUCER_FLUSH_INTERVAL_MS": "50"}  # fmt: skip
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="metrics", tenant_id=f"metrics-{uuid.uuid4().hex[:6]}")
    port = spare_port()
    with celery_worker(RABBITMQ, queue, log_dir=tmp_path, env=env) as worker:
        web = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "web.app:app", "--port", str(port), "--host", "127.0.0.1"],
            cwd=REPO_ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: port_open(port), 30, "uvicorn did not start")
            base = f"http://127.0.0.1:{port}"
            events = [{"feature_name": "summarization", "user_id": f"u{i}", "input_tokens": i} for i in range(EVENTS)]
            response = httpx.post(f"{base}/v1/events", json={"events": events},
                                  headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert response.status_code == 202, response.text

            def scrape() -> str:
                return httpx.get(f"{base}/metrics").text

            text = wait_for(lambda: (t := scrape()) and (sample(t, "analytics_events_stored_total") or 0) >= EVENTS and t,
                            30, lambda: describe(worker, metrics=scrape()))  # fmt: skip
        finally:
            web.terminate()
            web.wait(10)
    assert sample(text, "analytics_events_stored_total") == EVENTS
    assert sample(text, 'analytics_http_events_total{result="accepted"}') == EVENTS
    assert sample(text, "analytics_ingest_batch_events_count") >= 1
    assert 0 <= sample(text, "analytics_ingest_lag_seconds") < 60
    assert sample(text, "analytics_partition_months_ahead") >= 1
    assert sample(text, "analytics_ingest_queue_messages") == 0
    assert sample(text, "analytics_ingest_queue_consumers") == 1
    assert sample(text, "analytics_dead_letters") is not None
    assert sample(text, "analytics_rollup_lag_seconds") is not None
    assert "analytics_scrape_errors_total{source=" not in text, text
