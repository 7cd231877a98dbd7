"""The pure parts of ``python -m bench.abuse``: its catalogue, verdicts, figures and RESULT line.

The benchmark itself needs the whole stack and is run by hand; these check
what it counts and prints, without a database or a broker.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

import bench.abuse  # noqa: F401 - imports the attack modules, which register the catalogue
from bench.abuse_attacks import MONTHS, outside_window_months
from bench.abuse_core import (
    REGISTRY,
    TARGET_MIN_ATTACKS,
    Attack,
    AttackResult,
    Verdict,
    attack,
    attack_table,
    failed_to_run,
    figures,
)  # fmt: skip
from bench.abuse_stack import celery_app_of, raw_post
from config.settings import Settings
from storage.partitions import Month


def result(name: str, refused: bool, server_errors: int = 0, cross: int = 0) -> AttackResult:
    item = Attack(name, "http", f"tries {name}", "a refusal", lambda ctx: lambda: Verdict(refused, "x"))
    return AttackResult(item, Verdict(refused, f"happened {name}", cross), server_errors)


def all_refused(n: int = TARGET_MIN_ATTACKS) -> list[AttackResult]:
    return [result(f"a{i}", True) for i in range(n)]


def clean_figures(results: list[AttackResult], **overrides: object) -> object:
    values = dict(extra_server_errors=0, extra_cross_tenant=0, normal_lost=0, normal_duplicated=0,
                  partitions_created_by_attacks=0, max_web_rss_growth_mb=3.25)  # fmt: skip
    values.update(overrides)
    return figures(results, **values)  # type: ignore[arg-type]


def test_the_catalogue_holds_at_least_25_distinct_attacks_over_http_and_the_broker() -> None:
    assert len(REGISTRY) >= TARGET_MIN_ATTACKS
    assert len({a.name for a in REGISTRY.values()}) == len(REGISTRY)
    assert len({a.launch for a in REGISTRY.values()}) == len(REGISTRY), "two names for one attack"
    assert {a.channel for a in REGISTRY.values()} == {"http", "broker"}
    assert sum(a.channel == "broker" for a in REGISTRY.values()) >= 8
    for item in REGISTRY.values():
        assert item.tries and item.expected, item.name


def test_an_attack_name_is_registered_once() -> None:
    name = next(iter(REGISTRY))
    with pytest.raises(ValueError, match="registered twice"):
        attack(name, "http", "again", "refused")(lambda ctx: lambda: Verdict(True, ""))


def test_figures_count_refusals_errors_and_cross_tenant_effects() -> None:
    results = [*all_refused(24), result("leak", False, server_errors=2, cross=3)]
    figs = clean_figures(results, extra_server_errors=1, extra_cross_tenant=4)
    assert (figs.attacks, figs.refused, figs.server_errors, figs.cross_tenant_effects) == (25, 24, 3, 7)
    assert not figs.all_met()
    missed = [name for name, _, _, met in figs.targets() if not met]
    assert missed == ["refused", "server_errors", "cross_tenant_effects"]


def test_every_target_met_only_when_each_figure_is_within_its_target() -> None:
    assert clean_figures(all_refused()).all_met()
    for override in ({"normal_lost": 1}, {"normal_duplicated": 1}, {"partitions_created_by_attacks": 1},
                     {"max_web_rss_growth_mb": 20.5}):  # fmt: skip
        assert not clean_figures(all_refused(), **override).all_met(), override
    assert clean_figures(all_refused(), max_web_rss_growth_mb=20.0).all_met()
    assert not clean_figures(all_refused(TARGET_MIN_ATTACKS - 1)).all_met()  # too few attacks


def test_the_result_line() -> None:
    figs = clean_figures([*all_refused(26), result("x", False, server_errors=1)], normal_lost=5, normal_duplicated=2,
                         partitions_created_by_attacks=3, max_web_rss_growth_mb=12.345)  # fmt: skip
    assert figs.result_line() == (
        "RESULT attacks=27 refused=26 server_errors=1 cross_tenant_effects=0 normal_lost=5 normal_duplicated=2"
        " partitions_created_by_attacks=3 max_web_rss_growth_mb=12.3"
    )


def test_an_attack_that_breaks_is_reported_not_refused_with_its_error() -> None:
    verdict = failed_to_run(RuntimeError("boom"))
    assert not verdict.refused and "RuntimeError: boom" in verdict.happened


def test_the_table_shows_every_attack_and_its_verdict() -> None:
    table = attack_table([result("kept_out", True), result("got_in", False, server_errors=1)])
    lines = table.splitlines()
    assert lines[0].split() == ["attack", "via", "tries", "expected", "refusal", "what", "happened", "refused"]
    assert lines[2].startswith("kept_out") and lines[2].endswith("yes")
    assert lines[3].startswith("got_in") and lines[3].endswith("NO") and "[1 server error(s)]" in lines[3]


def test_the_month_attacks_name_only_months_the_accept_window_refuses() -> None:
    settings = Settings()
    months = outside_window_months(SimpleNamespace(settings=settings), MONTHS)  # type: ignore[arg-type]
    assert len(set(months)) == MONTHS
    now = datetime.now(UTC)
    oldest = Month.of(now - timedelta(days=settings.event_max_past_age_days))
    newest = Month.of(now + timedelta(seconds=settings.event_max_future_skew_s))
    assert all(m.end <= oldest.start or m.start > newest.end for m in months)


@pytest.mark.parametrize(("command", "app"), [
    ("exec celery -A tasks.app worker -n ingest@%h -Q ingest", "tasks.app"),
    ("exec celery --app=tasks.ingest_app worker -Q ingest", "tasks.ingest_app"),
    ("exec python -m tasks.aggregator", "tasks.app"),
])  # fmt: skip
def test_the_ingest_worker_app_is_read_from_the_procfile_command(command: str, app: str) -> None:
    assert celery_app_of(command) == app


@contextmanager
def answering_server(read_bytes: int, status: int = 413) -> Iterator[str]:
    """A one-connection HTTP server that reads ``read_bytes`` of the request, answers ``status`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            received = 0
            while received < read_bytes and (chunk := conn.recv(65_536)):
                received += len(chunk)
            conn.sendall(f"HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(5)


def test_a_raw_post_stops_sending_once_the_server_answers() -> None:
    with answering_server(read_bytes=1) as url:
        answer = raw_post(url, "/v1/events", {}, 200 * 1024 * 1024, chunked=True, timeout_s=10)
    assert answer.status == 413
    assert not answer.complete and answer.bytes_sent < 50 * 1024 * 1024


def test_a_withheld_body_is_never_complete() -> None:
    """Content-Length over the limit with 1 KiB sent: answered or not, the declared body was not sent."""
    with answering_server(read_bytes=1024) as url:  # the headers and most of the 1 KiB
        answer = raw_post(url, "/v1/events", {}, 1024, chunked=False, declared_length=5_000_001, timeout_s=10)
    assert answer.status == 413 and answer.bytes_sent <= 1024 and not answer.complete


def test_a_body_read_whole_before_the_answer_is_complete() -> None:
    with answering_server(read_bytes=10**9, status=401) as url:
        answer = raw_post(url, "/v1/events", {}, 3 * 1024 * 1024, chunked=True, timeout_s=2)
    assert answer.complete and answer.bytes_sent == 3 * 1024 * 1024
