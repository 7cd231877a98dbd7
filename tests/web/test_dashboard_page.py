"""The dashboard page in a real browser (headless Chromium through Selenium), on real data.

Events go the whole way: ``POST /v1/events`` to a uvicorn subprocess, the
producer, RabbitMQ (a private queue), a real Celery worker, PostgreSQL, then
a rollup run (``python -m cli rollups run``). The browser opens the page that
same server serves, types a tenant key, and the test reads back what a person
would see: the charts Chart.js drew and the summary table, whose figures must
be what was sent, and the cost figures, which must be the strings the cost API
answers for the requests the page made. The browser console must stay free of errors (a CSP
violation, a failed request, a script error) and every resource must come from
the server itself. Screenshots land in the test's directory and in
``test-output/`` at the repository root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from kombu import Connection
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from devtools.processes import REPO_ROOT, wait_for
from devtools.web import Server, uvicorn_server
from devtools.workers import celery_worker, describe
from storage.api_keys import create_key

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1500",
)  # fmt: skip
SCREENSHOT_DIR = REPO_ROOT / "test-output"
PAGE_TIMEOUT_S = 30.0
STORE_TIMEOUT_S = 60.0
# What the test tenant sends in the last 24 hours: calls per feature, every ERROR_EVERY-th one failing.
CALLS_PER_FEATURE = {"summarization": 12, "smart_search": 7, "forecasting": 3}
ERROR_EVERY = 4
SPREAD_HOURS = 6  # the recent events are spread over this many hours
OLD_EVENT_AGE = timedelta(days=3)  # one more event, inside 7 days but outside 24 hours
OLD_EVENT_FEATURE = "smart_search"
OTHER_TENANT_CALLS = 5  # another tenant's events, which the page must never show
# Models: the catalog prices PRICED_MODEL (provider PRICED_PROVIDER); nothing prices UNPRICED_MODEL, which every
# UNPRICED_EVERY-th event uses. Every CACHED_EVERY-th priced event reads CACHE_READ_TOKENS from the cache.
PRICED_MODEL, PRICED_PROVIDER = "gpt-4o-mini", "openai"
UNPRICED_MODEL = "acme-internal-llm"
UNPRICED_EVERY = 3
# Every HOURLY_PRICED_EVERY-th other event uses a model the catalog prices by time of day (given without a
# provider): its per-user figures come from daily cells and are approximate.
HOURLY_PRICED_MODEL = "deepseek-chat"
HOURLY_PRICED_EVERY = 5
CACHED_EVERY = 2
CACHE_READ_TOKENS = 5
USER_MARKUP = "<i>user</i>-"  # user ids hold markup: the page must show it as text
# One streamed call (the first of STREAMED_FEATURE, latency 100 ms): its time to first token, sent unrounded.
STREAMED_FEATURE = "summarization"
STREAMED_TTFT_MS = 37.4
TTFT_FIELDS = ("ttft_p50_ms", "ttft_p95_ms")


@dataclass
class Seeded:
    """The data behind the page: the tenant, its key and what was sent."""

    tenant: str
    key: str
    recent: Counter[str]
    old: Counter[str]
    models: Counter[str]  # recent calls per model
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)


def _event(feature: str, index: int, moment: datetime) -> dict[str, Any]:
    failed = index % ERROR_EVERY == ERROR_EVERY - 1
    event: dict[str, Any] = {
        "feature_name": feature, "user_id": f"{USER_MARKUP}{index % 3}", "model": PRICED_MODEL,
        "provider": PRICED_PROVIDER, "input_tokens": 10 + index, "output_tokens": 5 + index,
        "latency_ms": 100.0 + 25 * index, "status": "error" if failed else "success", "timestamp": moment.isoformat(),
    }  # fmt: skip
    if index % UNPRICED_EVERY == UNPRICED_EVERY - 1:
        event["model"] = UNPRICED_MODEL
        del event["provider"]
    elif index % HOURLY_PRICED_EVERY == HOURLY_PRICED_EVERY - 1:
        event["model"] = HOURLY_PRICED_MODEL
        del event["provider"]
    elif index % CACHED_EVERY == CACHED_EVERY - 1:
        event["cache_read_tokens"] = CACHE_READ_TOKENS
    if failed:
        event["error_type"] = "timeout"
    if feature == STREAMED_FEATURE and index == 0:
        event["time_to_first_token_ms"] = STREAMED_TTFT_MS
    return event


def _recent_events(now: datetime) -> list[dict[str, Any]]:
    events = []
    for feature, calls in CALLS_PER_FEATURE.items():
        for index in range(calls):
            moment = now - timedelta(hours=index % SPREAD_HOURS, minutes=5 + index)
            events.append(_event(feature, index, moment))
    return events


def _post(server: Server, key: str, events: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{server.url}/v1/events", json={"events": events},
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip
    assert response.status_code == httpx.codes.ACCEPTED, response.text
    assert response.json()["accepted"] == len(events)


def _stored(engine: Engine, tenant: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM analytics_events WHERE tenant_id = :t"), {"t": tenant}
        ).scalar_one()


def _delete_queue(name: str) -> None:
    with Connection(RABBITMQ) as conn:
        conn.default_channel.queue_delete(name)


def _materialize_rates(engine: Engine, events: list[dict[str, Any]]) -> None:
    """The rate rows of the events' (model, provider) pairs, as the rollup run makes them (harmless if it did)."""
    from pricing.rates import ensure_priced  # imported late: it reads the price catalog

    with Session(engine) as session, session.begin():
        ensure_priced(session, {(e["model"], e.get("provider", "")) for e in events})


@pytest.fixture(scope="module")
def seeded(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A tenant with events stored through the whole pipeline and rolled up; its key."""
    log_dir = tmp_path_factory.mktemp("dashboard")
    suffix = uuid.uuid4().hex[:8]
    tenant, other_tenant = f"dash-{suffix}", f"dash-other-{suffix}"
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="dashboard test", tenant_id=tenant)
        _, other_key = create_key(session, name="dashboard test, other", tenant_id=other_tenant)
    queue = f"ingest-dashboard-{suffix}"
    env = {"INGEST_QUEUE": queue, "CELERY_BROKER_URL": RABBITMQ, "PRODUCER_SPOOL_DIR": str(log_dir / "spool")}
    now = datetime.now(UTC)
    recent = _recent_events(now)
    old = [_event(OLD_EVENT_FEATURE, 0, now - OLD_EVENT_AGE)]
    others = [_event("summarization", i, now - timedelta(minutes=i)) for i in range(OTHER_TENANT_CALLS)]
    try:
        with celery_worker(RABBITMQ, queue, log_dir=log_dir, stop_timeout=2) as worker, \
                uvicorn_server(log_dir, env) as server:  # fmt: skip
            _post(server, key, recent + old)
            _post(server, other_key, others)
            sent = len(recent) + len(old)
            wait_for(lambda: _stored(engine, tenant) == sent and _stored(engine, other_tenant) == len(others),
                     STORE_TIMEOUT_S, lambda: describe(worker, stored=_stored(engine, tenant), sent=sent))  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "cli", "rollups", "run"], cwd=REPO_ROOT, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        _materialize_rates(engine, recent + old)
        yield Seeded(tenant, key, Counter(e["feature_name"] for e in recent), Counter(e["feature_name"] for e in old),
                     Counter(e["model"] for e in recent), log_dir, env)  # fmt: skip
    finally:
        _delete_queue(queue)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile; console messages kept for the test to read."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver "
                    "(scripts/browser does it)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_ready(driver: webdriver.Chrome) -> None:
    def state() -> bool:
        current = driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        if current == "error":
            raise AssertionError(f"the page reports: {driver.find_element(By.ID, 'status').text}")
        return current == "ready"

    WebDriverWait(driver, PAGE_TIMEOUT_S).until(lambda _: state(), "the dashboard never finished loading")


def _refresh_with(driver: webdriver.Chrome, action: Any) -> None:
    """Do what makes the page load again, and wait for that load (not the previous one) to finish."""
    driver.execute_script("document.body.dataset.state = 'stale'")
    action()
    _wait_ready(driver)


def _table(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    """The summary table: feature -> field -> (raw value, shown text), plus the totals row under 'Total'."""
    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#summary-rows tr[data-feature]"):
        rows[row.get_attribute("data-feature")] = _cells(row)
    rows["Total"] = _cells(driver.find_element(By.ID, "total-row"))
    return rows


def _cells(row: Any) -> dict[str, str]:
    cells = {}
    for cell in row.find_elements(By.CSS_SELECTOR, "td[data-field]"):
        cells[cell.get_attribute("data-field")] = cell.get_attribute("data-value")
        cells[cell.get_attribute("data-field") + ".text"] = cell.text
    return cells


def _calls(table: dict[str, dict[str, str]]) -> dict[str, int]:
    return {feature: int(cells["calls"]) for feature, cells in table.items() if feature != "Total"}


def _console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _foreign_resources(driver: webdriver.Chrome, origin: str) -> list[str]:
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return [name for name in names if not name.startswith(origin + "/")]


def _api_requests(driver: webdriver.Chrome) -> list[str]:
    """The tenant routes the page fetched since it was (re)loaded: the last path segment of each."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return ["/" + name.split("?")[0].rsplit("/", 1)[1] for name in names if "/api/tenants/" in name]


def _summary_answer(driver: webdriver.Chrome, key: str) -> dict[str, Any]:
    """The page's own /summary request, asked again with the same URL: the API's answer per feature."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    [url] = [name for name in names if "/api/tenants/" in name and name.split("?")[0].endswith("/summary")]
    response = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == httpx.codes.OK, response.text
    return {row["feature_name"]: row for row in response.json()["features"]}


def _ms_text(value: float | None) -> str:
    """dashboard.js formatMs."""
    return "–" if value is None else f"{value:.{1 if value < 10 else 0}f} ms"


def _screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "no screenshot"
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    shutil.copy(path, SCREENSHOT_DIR / name)
    return path


def test_dashboard_shows_what_was_sent(seeded: Seeded, browser: webdriver.Chrome, tmp_path: Path) -> None:
    with uvicorn_server(tmp_path, seeded.extra_env) as server:
        browser.get(server.url + "/")  # redirects to the page
        assert browser.current_url == server.url + "/dashboard"
        browser.find_element(By.ID, "api-key").send_keys(seeded.key)
        _refresh_with(browser, browser.find_element(By.ID, "show").click)

        # The tenant comes from the key; the page asked /api/me.
        assert browser.find_element(By.ID, "tenant").get_attribute("value") == seeded.tenant

        # The table: calls per feature and in total, as sent (the 3-day-old event and the other tenant's left out).
        table = _table(browser)
        assert _calls(table) == seeded.recent, table
        total = sum(seeded.recent.values())
        assert int(table["Total"]["calls"]) == total
        assert table["Total"]["calls.text"] == f"{total:,}"
        errors = sum(sum(i % ERROR_EVERY == ERROR_EVERY - 1 for i in range(n)) for n in seeded.recent.values())
        assert int(table["Total"]["errors"]) == errors
        for feature, calls in seeded.recent.items():
            assert table[feature]["calls.text"] == str(calls)
            assert int(table[feature]["tokens_used"]) == sum(15 + 2 * i for i in range(calls))

        # Time to first token: the API's p50/p95 per feature, over the one streamed call (stored rounded; a single
        # value is its own percentile), "–" for the features that never streamed.
        answer = _summary_answer(browser, seeded.key)
        assert answer[STREAMED_FEATURE]["streamed_calls"] == 1
        assert (
            answer[STREAMED_FEATURE]["ttft_p50_ms"]
            == answer[STREAMED_FEATURE]["ttft_p95_ms"]
            == round(STREAMED_TTFT_MS)
        )
        for feature in seeded.recent:
            for name in TTFT_FIELDS:
                value = answer[feature][name]
                assert table[feature][f"{name}.text"] == _ms_text(value), (feature, name)
                assert table[feature][name] == ("" if value is None else f"{value:g}"), (feature, name)
                assert (value is None) == (feature != STREAMED_FEATURE), (feature, name)

        # The charts: four Chart.js instances on four canvases, a line per feature, summing to the table
        # (and the cost chart, which test_dashboard_cost_is_the_cost_api checks).
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-charts") == "5"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#charts canvas")) == 4
        drawn = browser.execute_script(
            "return Object.values(Chart.instances).filter(c => c.canvas.id !== 'chart-cost').map(c => ({"
            " canvas: c.canvas.id, lines: c.data.datasets.map(d => [d.label, d.data.reduce((s, v) => s + (v || 0), 0)])}))"
        )
        assert sorted(chart["canvas"] for chart in drawn) == ["chart-calls", "chart-error-rate", "chart-p95",
                                                              "chart-tokens"]  # fmt: skip
        calls_chart = next(chart for chart in drawn if chart["canvas"] == "chart-calls")
        assert dict(calls_chart["lines"]) == seeded.recent
        for chart in drawn:
            assert sorted(label for label, _ in chart["lines"]) == sorted(seeded.recent), chart
            if chart["canvas"] != "chart-error-rate":  # a feature may have no errors at all
                assert all(value > 0 for _, value in chart["lines"]), chart
        assert browser.find_element(By.ID, "charts-unavailable").is_displayed() is False
        _screenshot(browser, tmp_path, "dashboard.png")

        # A longer range takes in the 3-day-old event.
        _refresh_with(browser, lambda: Select(browser.find_element(By.ID, "range")).select_by_value("7d"))
        assert _calls(_table(browser)) == seeded.recent + seeded.old

        # The key is kept for this tab only: a reload loads the dashboard without typing it again;
        # it is in sessionStorage, never in localStorage (which outlives the tab), and the page says so.
        _refresh_with(browser, browser.refresh)
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == seeded.key
        assert _calls(_table(browser)) == seeded.recent + seeded.old  # the chosen range is kept too
        assert browser.execute_script("return sessionStorage.getItem('analytics.apiKey')") == seeded.key
        stored = browser.execute_script("return Object.keys(localStorage).map(k => localStorage.getItem(k))")
        assert seeded.key not in stored, stored
        assert "sessionStorage" in browser.find_element(By.ID, "key-storage").text

        # One chart request per load, whatever the number of features (it was one /series per feature).
        requests = _api_requests(browser)
        assert [path for path in requests if path.endswith("/feature-series")] == ["/feature-series"], requests
        assert not any(path.endswith("/series") for path in requests), requests
        assert "10 features" in browser.find_element(By.ID, "charts-note").text

        assert _console_errors(browser) == []
        assert _foreign_resources(browser, server.url) == []


def test_dashboard_without_the_chart_library_shows_the_table(
    seeded: Seeded, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """npm unavailable at setup: no charts, a notice saying so, and the table still right."""
    env = {**seeded.extra_env, "DASHBOARD_VENDOR_DIR": str(tmp_path / "no-chart-js")}
    with uvicorn_server(tmp_path, env) as server:
        browser.get(server.url + "/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(seeded.key)
        _refresh_with(browser, browser.find_element(By.ID, "show").click)
        assert browser.find_element(By.ID, "charts-unavailable").is_displayed()
        assert not browser.find_element(By.ID, "charts").is_displayed()
        assert not browser.find_element(By.ID, "cost-chart-box").is_displayed()
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-cost") == "ready"
        shown_models = {
            row.get_attribute("data-model") for row in browser.find_elements(By.CSS_SELECTOR, "#model-rows tr")
        }
        assert shown_models == set(seeded.models), shown_models
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-charts") == "unavailable"
        assert browser.execute_script("return typeof window.Chart") == "undefined"
        assert _calls(_table(browser)) == seeded.recent
        _screenshot(browser, tmp_path, "dashboard-no-charts.png")
        assert _console_errors(browser) == []


def test_dashboard_says_when_the_key_is_refused(seeded: Seeded, browser: webdriver.Chrome, tmp_path: Path) -> None:
    with uvicorn_server(tmp_path, seeded.extra_env) as server:
        browser.get(server.url + "/dashboard")
        browser.find_element(By.ID, "api-key").send_keys("ak_0123456789ab_not-a-real-secret")
        browser.execute_script("document.body.dataset.state = 'stale'")
        browser.find_element(By.ID, "show").click()
        WebDriverWait(browser, PAGE_TIMEOUT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "error"
        )
        assert "refused" in browser.find_element(By.ID, "status").text
        assert browser.find_elements(By.CSS_SELECTOR, "#summary-rows tr[data-feature]") == []
        # The only console error is the refused request itself.
        errors = _console_errors(browser)
        assert errors and all("401" in entry["message"] for entry in errors), errors


def test_api_docs_render_from_local_assets_under_the_csp(browser: webdriver.Chrome, tmp_path: Path) -> None:
    """API_DOCS_ENABLED: Swagger UI draws the schema with nothing from the internet and no CSP violation."""
    with uvicorn_server(tmp_path, {"API_DOCS_ENABLED": "true"}) as server:
        browser.get(server.url + "/docs")
        WebDriverWait(browser, PAGE_TIMEOUT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), "Swagger UI drew no operation"
        )
        paths = {e.get_attribute("data-path") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert "/api/tenants/{tenant_id}/feature-series" in paths, paths
        _screenshot(browser, tmp_path, "docs.png")
        assert _console_errors(browser) == []
        assert _foreign_resources(browser, server.url) == []


MANY_FEATURES = 13  # more than the page charts (web.dashboard.DEFAULT_SERIES_FEATURES)


def test_many_features_one_chart_request_top_ten_drawn_all_in_the_table(
    engine: Engine, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """A tenant with MANY_FEATURES features (rollups written directly): the page asks for the series
    once, draws the 10 with the most calls, says how many more the table holds, and lists them all."""
    tenant = f"dash-many-{uuid.uuid4().hex[:8]}"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    calls = {f"feature-{i:02d}": 100 - i for i in range(MANY_FEATURES)}  # feature-00 has the most
    with engine.begin() as conn:
        for feature, count in calls.items():
            conn.execute(
                text("INSERT INTO rollup_hourly VALUES (:t, :b, :f, 'm1', :c, 0, 1, 1, 2, :c, 1, 1,"
                     " ARRAY[1]::smallint[], ARRAY[:c])"),
                {"t": tenant, "b": hour, "f": feature, "c": count},
            )  # fmt: skip
    with Session(engine) as session, session.begin():
        _, key = create_key(session, name="dashboard many features", tenant_id=tenant)
    with uvicorn_server(tmp_path) as server:
        browser.get(server.url + "/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(key)
        _refresh_with(browser, browser.find_element(By.ID, "show").click)
        assert _calls(_table(browser)) == calls
        drawn = browser.execute_script(
            "return Chart.instances && Object.values(Chart.instances).find(c => c.canvas.id === 'chart-calls')"
            ".data.datasets.map(d => d.label)"
        )
        assert drawn == sorted(calls, key=lambda f: -calls[f])[:10]
        note = browser.find_element(By.ID, "charts-top").text
        assert note == "Charts: the 10 features with the most calls (3 more in the table).", note
        requests = _api_requests(browser)
        assert requests.count("/feature-series") == 1 and "/series" not in requests, requests
        assert _console_errors(browser) == []


# --- cost ---------------------------------------------------------------------------

COST_FIELDS = ("cost_usd", "cost_per_call_usd", "cost_per_1k_tokens_usd")
# How the page rounds an amount (dashboard.js formatUsd), done here with Decimal: at least MIN_PLACES decimals,
# SIGNIFICANT digits past a fraction's leading zeros, at most MAX_PLACES, trailing zeros trimmed to SHOWN_MIN_PLACES.
MIN_PLACES, SIGNIFICANT, MAX_PLACES, SHOWN_MIN_PLACES = 4, 4, 12, 2
COMPARED_DAYS = 2  # the custom range whose previous period holds the OLD_EVENT_AGE event


@dataclass(frozen=True)
class Asked:
    """One cost-side request the page made (its query) and the API's answer to the same URL."""

    query: dict[str, list[str]]
    answer: dict[str, Any]


def _usd_text(value: str, *, signed: bool = False) -> str:
    amount = Decimal(value)
    whole, _, fraction = value.lstrip("-").partition(".")
    zeros = len(fraction) - len(fraction.lstrip("0")) if int(whole) == 0 else 0
    places = min(MAX_PLACES, max(MIN_PLACES, zeros + SIGNIFICANT))
    rounded = abs(amount).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    integer, _, decimals = f"{rounded:,f}".partition(".")
    sign = "-" if amount < 0 and rounded else "+" if signed else ""
    return f"{sign}${integer}.{decimals.rstrip('0').ljust(SHOWN_MIN_PLACES, '0')}"


def _money_text(figures: dict[str, Any] | None, field: str) -> str:
    """What a cost cell shows for one /cost row: never $0 for unpriced calls, ≈ before an approximate amount."""
    if figures is None:
        return ""
    value = figures[field]
    if value is None:
        return "unpriced" if figures["unpriced_calls"] else "–"
    text = ("≈" if figures.get("approximate") else "") + _usd_text(value)
    if field == "cost_usd" and figures["unpriced_calls"]:
        text += f" + {figures['unpriced_calls']:,} unpriced calls"
    return text


def _cost_requests(driver: webdriver.Chrome, key: str) -> dict[str, Asked]:
    """The /cost and /active-users requests the page made since its resource timings were cleared, asked again
    with the same URLs; keyed by group_by ('active-users' for that route)."""
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    asked = {}
    for url in names:
        path, _, query = url.partition("?")
        route = path.rsplit("/", 1)[1]
        if "/api/tenants/" not in path or route not in ("cost", "active-users"):
            continue
        params = parse_qs(query)
        response = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == httpx.codes.OK, response.text
        asked[params["group_by"][0] if route == "cost" else route] = Asked(params, response.json())
    return asked


def _reload_cost(driver: webdriver.Chrome, key: str, action: Any) -> dict[str, Asked]:
    driver.execute_script("performance.clearResourceTimings()")
    _refresh_with(driver, action)
    state = driver.find_element(By.TAG_NAME, "body").get_attribute("data-cost")
    assert state == "ready", driver.find_element(By.ID, "cost-status").text
    return _cost_requests(driver, key)


def _choose(driver: webdriver.Chrome, select_id: str, value: str) -> Callable[[], None]:
    return lambda: Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def _value(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).get_attribute("data-value")


def _check_overview(driver: webdriver.Chrome, by_feature: dict[str, Any]) -> None:
    """Total, previous period and change: the API's strings; the change computed exactly from them."""
    nothing = {"cost_usd": "0", "unpriced_calls": 0}
    now, before = by_feature["total"] or nothing, by_feature["previous"]["total"] or nothing
    assert _value(driver, "cost-total") == (now["cost_usd"] or "")
    assert driver.find_element(By.ID, "cost-total").text == _money_text(now, "cost_usd")
    assert _value(driver, "cost-previous") == (before["cost_usd"] or "")
    assert driver.find_element(By.ID, "cost-previous").text == _money_text(before, "cost_usd")
    diff = Decimal(now["cost_usd"]) - Decimal(before["cost_usd"])
    assert Decimal(_value(driver, "cost-change")) == diff
    percent = (100 * float(diff)) / float(before["cost_usd"]) if Decimal(before["cost_usd"]) else None
    expected = _usd_text(str(diff), signed=True)
    if percent is not None:
        expected += f" ({'+' if percent > 0 else ''}{percent:.1f} %)"
    if now["unpriced_calls"] or before["unpriced_calls"]:
        expected += " (unpriced calls left out)"
    assert driver.find_element(By.ID, "cost-change").text == expected


def _model_rows(driver: webdriver.Chrome) -> dict[str, dict[str, str]]:
    return {row.get_attribute("data-model"): {**_cells(row), "name": row.find_element(By.TAG_NAME, "th").text}
            for row in driver.find_elements(By.CSS_SELECTOR, "#model-rows tr[data-model]")}  # fmt: skip


def test_dashboard_cost_is_the_cost_api(seeded: Seeded, browser: webdriver.Chrome, tmp_path: Path) -> None:
    """Every cost figure on the page is the string the cost API answers for the page's own requests, shown
    rounded from that string; the unpriced model is flagged with its calls, tokens and the advice, never $0."""
    with uvicorn_server(tmp_path, seeded.extra_env) as server:
        browser.get(server.url + "/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(seeded.key)
        asked = _reload_cost(browser, seeded.key, browser.find_element(By.ID, "show").click)
        assert set(asked) == {"feature", "model", "hour", "user", "active-users"}, asked
        by_feature, by_model = asked["feature"].answer, asked["model"].answer
        assert asked["feature"].query["compare"] == ["true"]
        total = by_feature["total"]
        assert total["calls"] == sum(seeded.recent.values())
        assert total["unpriced_calls"] == seeded.models[UNPRICED_MODEL] > 0
        assert Decimal(total["cost_usd"]) > 0

        # The per-feature cost columns and the totals row.
        table = _table(browser)
        assert {row["feature"] for row in by_feature["rows"]} == set(seeded.recent)
        for row in by_feature["rows"]:
            for field in COST_FIELDS:
                assert table[row["feature"]][field] == (row[field] or ""), (row, field)
                assert table[row["feature"]][field + ".text"] == _money_text(row, field), (row, field)
        for field in COST_FIELDS:
            assert table["Total"][field] == (total[field] or "")
            assert table["Total"][field + ".text"] == _money_text(total, field)
        _check_overview(browser, by_feature)

        # The per-model table: every model; the catalog prices two, the other is flagged and has no cost.
        models = _model_rows(browser)
        assert set(models) == set(seeded.models) == {row["model"] for row in by_model["rows"]}
        for row in by_model["rows"]:
            shown = models[row["model"]]
            assert int(shown["calls"]) == seeded.models[row["model"]] == row["calls"]
            assert int(shown["tokens_used"]) == row["tokens_used"]
            for field in COST_FIELDS:
                assert shown[field] == (row[field] or "") and shown[field + ".text"] == _money_text(row, field)
        for priced in (PRICED_MODEL, HOURLY_PRICED_MODEL):
            assert models[priced]["unpriced_calls.text"] == "yes" and Decimal(models[priced]["cost_usd"]) > 0
        assert models[UNPRICED_MODEL]["unpriced_calls.text"] == "UNPRICED"
        assert models[UNPRICED_MODEL]["cost_usd.text"] == "unpriced" and models[UNPRICED_MODEL]["cost_usd"] == ""

        # The UNPRICED flag: the model, its calls and tokens, and what to do.
        notice = browser.find_element(By.ID, "unpriced")
        assert notice.is_displayed() and "UNPRICED" in notice.text
        unpriced = next(row for row in by_model["rows"] if row["model"] == UNPRICED_MODEL)
        listed = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#unpriced-models li")]
        assert listed == [
            f"{UNPRICED_MODEL}: {unpriced['unpriced_calls']:,} calls, {unpriced['unpriced_tokens']:,} tokens"
        ]
        assert f"{total['unpriced_calls']:,} call(s), {total['unpriced_tokens']:,} tokens" in notice.text
        assert browser.find_element(By.ID, "unpriced-advice").text == by_feature["unpriced_advice"]
        assert "$0.00" not in notice.text

        # Top users by cost, in the API's order, their ids (which hold markup) shown as text.
        # The time-of-day model makes some per-user figures approximate: marked ≈.
        users = [(u.find_element(By.TAG_NAME, "th").text, _cells(u)) for u in
                 browser.find_elements(By.CSS_SELECTOR, "#user-rows tr[data-user]")]  # fmt: skip
        expected = [
            (row["user"], row["cost_usd"] or "", _money_text(row, "cost_usd")) for row in asked["user"].answer["rows"]
        ]
        assert [(name, cells["cost_usd"], cells["cost_usd.text"]) for name, cells in users] == expected
        assert all(name.startswith(USER_MARKUP) for name, _ in users) and users
        assert browser.find_elements(By.CSS_SELECTOR, "#user-rows i") == []
        assert any(row["approximate"] for row in asked["user"].answer["rows"])
        assert browser.find_elements(By.CSS_SELECTOR, "#user-rows [data-approximate='true'] .approx-mark")

        # Daily active users, as the API answers them.
        active = [(r.get_attribute("data-day"), r.get_attribute("data-feature"), int(_cells(r)["users"]))
                  for r in browser.find_elements(By.CSS_SELECTOR, "#active-rows tr[data-day]")]  # fmt: skip
        days = asked["active-users"].answer["days"]
        assert active == [(d["day"][:10], d["feature_name"], d["users"]) for d in days] and active

        # The cost chart: one point per hour; the API's amounts as numbers, a gap (never 0) for unpriced-only hours.
        points = browser.execute_script(
            "return Object.values(Chart.instances).find(c => c.canvas.id === 'chart-cost').data.datasets[0].data"
        )
        hours = asked["hour"].answer["rows"]
        assert sorted(v for v in points if v) == sorted(float(r["cost_usd"]) for r in hours if r["cost_usd"])
        assert points.count(None) == sum(r["cost_usd"] is None for r in hours)
        _screenshot(browser, tmp_path, "dashboard-cost.png")

        # Against the previous period: a range whose previous period of the same length holds the older event.
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        browser.execute_script(
            "document.getElementById('custom-start').value = arguments[0];"
            " document.getElementById('custom-end').value = arguments[1]",
            (hour - timedelta(days=COMPARED_DAYS)).strftime("%Y-%m-%dT%H:%M"),
            (hour + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        )
        asked = _reload_cost(browser, seeded.key, _choose(browser, "range", "custom"))
        previous = asked["feature"].answer["previous"]["total"]
        assert previous["calls"] == sum(seeded.old.values()) and Decimal(previous["cost_usd"]) > 0
        _check_overview(browser, asked["feature"].answer)

        # The model filter: the cost figures of that model only; the model list still offers every model.
        asked = _reload_cost(browser, seeded.key, _choose(browser, "filter-model", PRICED_MODEL))
        for group in ("feature", "hour", "user"):
            assert asked[group].query["model"] == [PRICED_MODEL], group
        assert "model" not in asked["model"].query
        filtered = asked["feature"].answer
        assert filtered["total"]["unpriced_calls"] == 0 and "unpriced_advice" not in filtered
        assert filtered["total"]["calls"] == seeded.models[PRICED_MODEL]  # the custom range, without the older event
        assert filtered["previous"]["total"]["calls"] == sum(seeded.old.values())
        _check_overview(browser, filtered)
        assert not browser.find_element(By.ID, "unpriced").is_displayed()
        assert set(_model_rows(browser)) == {PRICED_MODEL}
        options = {o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#filter-model option")}
        assert options == {"", *seeded.models}

        # And the feature filter on top: one feature's cost; the others' cost cells are left empty, not $0.
        feature = "summarization"
        asked = _reload_cost(browser, seeded.key, _choose(browser, "filter-feature", feature))
        assert asked["feature"].query["feature"] == [feature] and asked["active-users"].query["feature"] == [feature]
        _check_overview(browser, asked["feature"].answer)
        table = _table(browser)
        assert table[feature]["cost_usd"] == asked["feature"].answer["rows"][0]["cost_usd"]
        assert all(table[other]["cost_usd.text"] == "" for other in seeded.recent if other != feature)
        assert {r.get_attribute("data-feature") for r in browser.find_elements(By.CSS_SELECTOR, "#active-rows tr")} \
            == {feature}  # fmt: skip

        assert _console_errors(browser) == []
        assert _foreign_resources(browser, server.url) == []


def test_alerts_panel_shows_the_rules_state_and_history(
    seeded: Seeded, engine: Engine, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    from alerts.evaluate import evaluate_all  # imported late like the pricing helpers: the alerts stack
    from alerts.rules import add_rule, parse_rule
    from config import Settings

    name = f"<b>daily</b> {uuid.uuid4().hex[:6]}"  # markup: must show as text
    with engine.begin() as conn:
        add_rule(conn, seeded.tenant, parse_rule({"name": name, "kind": "budget_day", "warning_threshold": "0.000001",
                                                  "critical_threshold": "1000000"}), created_by="tests")  # fmt: skip
    evaluate_all(engine, Settings(), datetime.now(UTC))
    with uvicorn_server(tmp_path, seeded.extra_env) as server:
        browser.get(server.url + "/dashboard")
        browser.find_element(By.ID, "api-key").send_keys(seeded.key)
        _refresh_with(browser, browser.find_element(By.ID, "show").click)
        WebDriverWait(browser, PAGE_TIMEOUT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-alerts") == "ready",
            browser.find_element(By.ID, "alerts-status").text,
        )
        headers = {"Authorization": f"Bearer {seeded.key}"}
        base = f"{server.url}/api/tenants/{seeded.tenant}"
        rules = httpx.get(f"{base}/alert-rules", headers=headers).raise_for_status().json()
        changes = httpx.get(f"{base}/alert-history", params={"limit": 20}, headers=headers).raise_for_status().json()

        rule = next(r for r in rules if r["name"] == name)
        assert rule["state"] in {"ok", "warning", "critical"}, rule
        row = browser.find_element(By.CSS_SELECTOR, f"#alert-rule-rows tr[data-rule='{rule['id']}']")
        cells = _cells(row)
        assert cells["name.text"] == name and cells["state"] == rule["state"], cells
        assert cells["value"] == (rule["value"] or "") and cells["warning_threshold"] == rule["warning_threshold"]
        assert row.find_elements(By.TAG_NAME, "b") == []
        state_class = row.find_element(By.CSS_SELECTOR, "td.state").get_attribute("class") or ""
        assert "state-" + rule["state"] in state_class.split(), state_class
        assert browser.find_element(By.ID, "alerts-empty").get_attribute("hidden") is not None

        shown = [_cells(r) for r in browser.find_elements(By.CSS_SELECTOR, "#alert-history-rows tr[data-change]")]
        assert [(c["rule_name.text"], c["change"]) for c in shown] == [
            (c["rule_name"], f"{c['from_state']}>{c['to_state']}") for c in changes
        ]
        if rule["state"] != "ok":  # a change from the first evaluation is listed
            assert any(c["rule_name.text"] == name for c in shown), shown
