"""The fault scenarios: each drives a steady load, injects one fault, and reconciles.

Shared by the pytest suite (tests/faults/test_faults.py, ``-m faults``) and the
report script (``python -m bench.faults``). Every scenario starts its own
private PostgreSQL and broker on spare ports (devtools.servers), never the
machine's shared services; its producers are real ``Tracker`` processes and
its workers real Celery worker processes. It ends with a reconciliation of the
events ``track()`` accepted against the rows stored and the dead letters:

    lost       = accepted events neither stored nor dead-lettered
    duplicated = rows stored beyond the first of an event

A scenario passes with ``lost=0 duplicated=0``, no rows nobody sent, and
exactly the dead letters it expects (none, except for ``bad_input``).
"""

from __future__ import annotations

import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devtools.faults import malformed
from devtools.faults.cluster import WORKER_SETTINGS, Cluster, Counts, count_log, open_write_transaction
from devtools.faults.netns import Host, namespaces_available
from devtools.workers import Worker, celery_worker
from tasks.names import INGEST_WRITE_BATCH

DEFAULT_RATE = 1500.0  # events per second
DEFAULT_DURATION_S = 30.0
OUTAGE_S = 20.0  # how long a server stays down
FAULT_AT_S = 5.0  # load before the fault
KILLS = 5
DRAIN_TIMEOUT_S = 150.0


@dataclass
class Options:
    workdir: Path
    rate: float = DEFAULT_RATE
    duration: float = DEFAULT_DURATION_S
    seed: int = field(default_factory=lambda: random.randrange(1_000_000))
    log: Callable[[str], None] = lambda line: None


@dataclass
class Outcome:
    scenario: str
    broker: str
    counts: Counts
    seconds: float
    notes: list[str] = field(default_factory=list)
    expected_dead_lettered: int = 0
    problems: list[str] = field(default_factory=list)  # anything else that went wrong (a worker died...)

    @property
    def passed(self) -> bool:
        c = self.counts
        return (
            not self.problems
            and c.sent > 0
            and c.lost == 0
            and c.duplicated == 0
            and c.unexpected == 0
            and c.dead_lettered == self.expected_dead_lettered
        )

    def line(self) -> str:
        c = self.counts
        return (
            f"{self.scenario}: sent={c.sent} stored={c.stored} dead_lettered={c.dead_lettered}"
            f" lost={c.lost} duplicated={c.duplicated} ({self.seconds:.0f}s)"
        )

    def explain(self) -> str:
        c = self.counts
        parts = [self.line(), *self.notes, *self.problems]
        if c.unexpected:
            parts.append(f"{c.unexpected} rows of events nobody sent")
        if c.dead_lettered != self.expected_dead_lettered:
            parts.append(f"dead letters: expected {self.expected_dead_lettered}, found {c.dead_lettered}")
        if c.missing_sample:
            parts.append(f"missing, e.g.: {', '.join(c.missing_sample)}")
        return "\n".join(parts)


@dataclass(frozen=True)
class Scenario:
    name: str
    broker: str
    description: str
    run: Callable[[Options], Outcome]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, broker: str, description: str
) -> Callable[[Callable[[Options], Outcome]], Callable[[Options], Outcome]]:
    def register(fn: Callable[[Options], Outcome]) -> Callable[[Options], Outcome]:
        SCENARIOS[name] = Scenario(name, broker, description, fn)
        return fn

    return register


def run_scenario(name: str, options: Options) -> Outcome:
    """Run one scenario; an exception becomes a failed outcome with the traceback."""
    spec = SCENARIOS[name]
    options.workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        outcome = spec.run(options)
    except Exception:  # noqa: BLE001 - reported, not raised: the other scenarios still run
        outcome = Outcome(name, spec.broker, Counts(), 0.0, problems=[traceback.format_exc()])
    outcome.seconds = time.monotonic() - started
    return outcome


def _alive(worker: Worker, what: str, problems: list[str]) -> None:
    if not worker.alive():
        problems.append(f"{what} exited ({worker.proc.returncode}):\n{worker.log_tail()}")


def _drain(cluster: Cluster, producers: dict[str, int]) -> Counts:
    return cluster.settle(producers, DRAIN_TIMEOUT_S)


def _check_flushed(report: dict, problems: list[str], who: str) -> None:
    if not report.get("flushed", report.get("frozen")):
        problems.append(f"producer {who} could not publish everything: {report}")
    if report.get("refused"):
        problems.append(f"producer {who}: track() refused {report['refused']} events (buffer full)")


# --- the scenarios ------------------------------------------------------------------------


@scenario("worker_sigkill", "rabbitmq", f"the worker's process group SIGKILLed at random moments, {KILLS} times")
def worker_sigkill(o: Options) -> Outcome:
    rng = random.Random(o.seed)
    problems: list[str] = []
    with Cluster(o.workdir / "worker_sigkill", "rabbitmq") as cluster:
        load = cluster.load("p0", rate=o.rate, duration=o.duration)
        mid_batch = 0
        for kill in range(1, KILLS + 1):
            with cluster.worker() as (worker, app_name):
                time.sleep(rng.uniform(0.5, 3.0))
                # The random moment, nudged to fall inside a write when one is close.
                mid_batch += open_write_transaction(cluster.database_url, app_name, timeout=1.0)
                worker.kill_group(signal.SIGKILL)
                o.log(f"  kill {kill}/{KILLS}: worker {worker.nodename} SIGKILLed")
        with cluster.worker() as (worker, _):
            report = load.wait(o.duration + 240)
            _check_flushed(report, problems, "p0")
            counts = _drain(cluster, {"p0": report["sent"]})
            _alive(worker, "the last worker", problems)
        notes = [f"{KILLS} SIGKILLs of the whole worker group, {mid_batch} of them with rows written and not"
                 f" committed; seed {o.seed}"]  # fmt: skip
    return Outcome("worker_sigkill", "rabbitmq", counts, 0, notes, problems=problems)


@scenario("postgres_down", "rabbitmq", f"PostgreSQL crashed (pg_ctl stop -m immediate) for {OUTAGE_S:.0f} s under load")
def postgres_down(o: Options) -> Outcome:
    problems: list[str] = []
    with Cluster(o.workdir / "postgres_down", "rabbitmq") as cluster, cluster.worker() as (worker, _):
        load = cluster.load("p0", rate=o.rate, duration=max(o.duration, FAULT_AT_S + OUTAGE_S + 5))
        time.sleep(FAULT_AT_S)
        cluster.pg.stop("immediate")
        o.log(f"  PostgreSQL down for {OUTAGE_S:.0f} s")
        time.sleep(OUTAGE_S)
        cluster.pg.start()
        o.log("  PostgreSQL back")
        report = load.wait(o.duration + 240)
        _check_flushed(report, problems, "p0")
        counts = _drain(cluster, {"p0": report["sent"]})
        _alive(worker, "the worker", problems)
        retries = count_log(worker, "not stored (")
        if retries == 0:
            problems.append("the worker never retried a batch: the outage was not felt")
    notes = [f"{retries} batch attempts failed and were retried with backoff (none acknowledged as done)"]
    return Outcome("postgres_down", "rabbitmq", counts, 0, notes, problems=problems)


def _broker_down(name: str, broker: str, o: Options) -> Outcome:
    problems: list[str] = []
    with Cluster(o.workdir / name, broker) as cluster, cluster.worker() as (worker, _):
        load = cluster.load("p0", rate=o.rate, duration=max(o.duration, FAULT_AT_S + OUTAGE_S + 5))
        time.sleep(FAULT_AT_S)
        cluster.broker.stop()
        o.log(f"  {broker} down for {OUTAGE_S:.0f} s")
        peak_spooled = 0
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            peak_spooled = max(peak_spooled, load.status().get("spooled", 0))
            time.sleep(0.5)
        cluster.broker.start()
        o.log(f"  {broker} back")
        report = load.wait(o.duration + 240)
        _check_flushed(report, problems, "p0")
        counts = _drain(cluster, {"p0": report["sent"]})
        _alive(worker, "the worker", problems)
        if peak_spooled == 0:
            problems.append("the producer never spooled: the outage was not felt")
    notes = [f"the producer spooled up to {peak_spooled} events to disk during the outage; the worker reconnected"]
    return Outcome(name, broker, counts, 0, notes, problems=problems)


@scenario("rabbitmq_down", "rabbitmq", f"RabbitMQ stopped for {OUTAGE_S:.0f} s and restarted under load")
def rabbitmq_down(o: Options) -> Outcome:
    return _broker_down("rabbitmq_down", "rabbitmq", o)


@scenario("redis_down", "redis", f"Redis stopped for {OUTAGE_S:.0f} s and restarted under load"
          f" (visibility_timeout {WORKER_SETTINGS['REDIS_VISIBILITY_TIMEOUT_S']} s)")  # fmt: skip
def redis_down(o: Options) -> Outcome:
    return _broker_down("redis_down", "redis", o)


@scenario("producer_killed_spool", "rabbitmq",
          "producer SIGKILLed while the broker is down; the next producer process replays its disk spool")  # fmt: skip
def producer_killed_spool(o: Options) -> Outcome:
    problems: list[str] = []
    with Cluster(o.workdir / "producer_killed_spool", "rabbitmq") as cluster, cluster.worker() as (worker, _):
        first = cluster.load("pA", rate=o.rate, duration=3600)
        time.sleep(FAULT_AT_S)
        cluster.broker.stop()
        o.log("  broker down")
        time.sleep(5)
        report_a = first.freeze_and_kill()
        segments = len(list(cluster.spool.rglob("*.jsonl")))
        o.log(f"  producer A SIGKILLed with {report_a.get('spooled')} events in {segments} spool segments")
        if not segments or not report_a.get("spooled"):
            problems.append(f"producer A left nothing in the spool: {report_a}")
        second = cluster.load("pB", rate=o.rate, duration=max(o.duration - FAULT_AT_S - 5, 15))
        time.sleep(10)
        cluster.broker.start()
        o.log("  broker back")
        report_b = second.wait(o.duration + 240)
        _check_flushed(report_a, problems, "pA")
        _check_flushed(report_b, problems, "pB")
        counts = _drain(cluster, {"pA": report_a["sent"], "pB": report_b["sent"]})
        _alive(worker, "the worker", problems)
        leftover = list(cluster.spool.rglob("*.jsonl"))
        if leftover:
            problems.append(f"spool segments left after the replay: {leftover}")
    notes = [
        f"producer A: {report_a['sent']} events accepted, {report_a.get('spooled')} of them only in the spool"
        f" ({segments} segments) when it was SIGKILLed; producer B replayed them and added {report_b['sent']}"
    ]
    return Outcome("producer_killed_spool", "rabbitmq", counts, 0, notes, problems=problems)


# --- two hosts ------------------------------------------------------------------------------

RABBITMQ_HEARTBEAT_S = 5  # the private node's proposal; a vanished worker's messages return within ~2 beats


@contextmanager
def netns_worker(host: Host, broker_url: str, queue: str, database_url: str, log_dir: Path,
                 concurrency: int = 2) -> Iterator[Worker]:  # fmt: skip
    """devtools.workers.celery_worker, run inside ``host``'s network namespace."""
    env = {**WORKER_SETTINGS, "DATABASE_URL": database_url}
    with celery_worker(broker_url, queue, log_dir=log_dir, concurrency=concurrency, env=env,
                       ready_timeout=60, wrap=host.command) as worker:  # fmt: skip
        yield worker


@scenario("two_hosts_partition", "rabbitmq",
          f"two workers on two hosts (network namespaces); one cut off mid-batch for {OUTAGE_S:.0f} s, then healed")  # fmt: skip
def two_hosts_partition(o: Options) -> Outcome:
    why_not = namespaces_available()
    if why_not is not None:
        return _two_processes_frozen(o, why_not)
    problems: list[str] = []
    hosts = [Host("a"), Host("b")]
    with ExitStack() as stack:
        for host in hosts:
            stack.callback(host.delete)
            host.create()
        a, b = hosts
        cluster = stack.enter_context(
            Cluster(
                o.workdir / "two_hosts_partition",
                "rabbitmq",
                listen=(a.gateway, b.gateway),
                trusted=(a.network, b.network),
                heartbeat=RABBITMQ_HEARTBEAT_S,
            )
        )
        workers = {}
        for host in hosts:
            app_name = f"fault-host-{host.namespace}"
            workers[host] = stack.enter_context(netns_worker(
                host, cluster.broker.url_via(host.gateway), cluster.queue,
                cluster.pg.url(host=host.gateway, application_name=app_name), cluster.workdir,
            ))  # fmt: skip
        load = cluster.load("p0", rate=o.rate, duration=max(o.duration, FAULT_AT_S + OUTAGE_S + 5))
        time.sleep(FAULT_AT_S)
        mid_batch = open_write_transaction(cluster.database_url, f"fault-host-{a.namespace}", timeout=10)
        a.cut()
        o.log(f"  host a cut off ({'mid-batch' if mid_batch else 'no batch caught in flight'})")
        if not mid_batch:
            problems.append("host a never had a batch in flight to cut")
        time.sleep(OUTAGE_S)
        a.heal()
        o.log("  host a back on the network")
        report = load.wait(o.duration + 240)
        _check_flushed(report, problems, "p0")
        counts = _drain(cluster, {"p0": report["sent"]})
        for host, worker in workers.items():
            _alive(worker, f"the worker on host {host.namespace}", problems)
        done = {host.namespace[:7]: len(worker.results()) for host, worker in workers.items()}
    notes = [f"worker on host a cut off with rows written and not committed; batches completed per host: {done}"]
    return Outcome("two_hosts_partition", "rabbitmq", counts, 0, notes, problems=problems)


def _two_processes_frozen(o: Options, why: str) -> Outcome:
    """Fallback without network namespaces: worker A frozen (SIGSTOP) mid-batch, then thawed."""
    problems: list[str] = []
    with Cluster(o.workdir / "two_hosts_partition", "rabbitmq", heartbeat=RABBITMQ_HEARTBEAT_S) as cluster, \
            cluster.worker(app_name="fault-host-a") as (a, app_a), cluster.worker() as (b, _):  # fmt: skip
        load = cluster.load("p0", rate=o.rate, duration=max(o.duration, FAULT_AT_S + OUTAGE_S + 5))
        time.sleep(FAULT_AT_S)
        mid_batch = open_write_transaction(cluster.database_url, app_a, timeout=10)
        a.kill_group(signal.SIGSTOP)
        time.sleep(OUTAGE_S)
        a.kill_group(signal.SIGCONT)
        report = load.wait(o.duration + 240)
        _check_flushed(report, problems, "p0")
        counts = _drain(cluster, {"p0": report["sent"]})
        _alive(a, "worker a", problems)
        _alive(b, "worker b", problems)
    notes = [
        f"network namespaces unavailable ({why}): two worker processes, A frozen with SIGSTOP"
        f" {'mid-batch' if mid_batch else '(no batch caught in flight)'} for {OUTAGE_S:.0f} s"
    ]
    return Outcome("two_hosts_partition", "rabbitmq", counts, 0, notes, problems=problems)


# --- bad input under load -------------------------------------------------------------------


@scenario("bad_input", "redis", "good events mixed with every kind of malformed row, message and raw body on the queue")
def bad_input(o: Options) -> Outcome:
    from kombu import Connection, Exchange, Queue

    from tasks.app import app

    problems: list[str] = []
    rounds = max(3, int(o.duration // 5))
    good_per_message = 200
    with Cluster(o.workdir / "bad_input", "redis") as cluster, cluster.worker() as (worker, _), \
            Connection(cluster.broker_url) as conn:  # fmt: skip
        tenant = cluster.tenant
        target = Queue(cluster.queue, Exchange(""), routing_key=cluster.queue)
        producer = conn.Producer()
        good = bad = 0
        for r in range(rounds):
            rows = []
            for case_no, case in enumerate(malformed.BAD_ROWS):
                rows.extend(malformed.row(malformed.event(tenant, f"p0-{good + i}"))
                            for i in range(good_per_message // len(malformed.BAD_ROWS)))  # fmt: skip
                good += good_per_message // len(malformed.BAD_ROWS)
                rows.append(case.make(tenant, f"bad-{tenant}-{r}-{case_no}"))
                bad += 1
            # A good event twice in one batch: stored once, not a dead letter.
            repeated = malformed.row(malformed.event(tenant, f"p0-{good}"))
            rows += [repeated, list(repeated)]
            good += 1
            app.send_task(INGEST_WRITE_BATCH, args=[malformed.message(rows)], queue=cluster.queue, connection=conn)
            app.send_task(INGEST_WRITE_BATCH, args=[malformed.message([])], queue=cluster.queue, connection=conn)
            for case_no, case in enumerate(malformed.BAD_MESSAGES):
                app.send_task(INGEST_WRITE_BATCH, args=[case.make(f"{tenant}-{r}-{case_no}")],
                              queue=cluster.queue, connection=conn)  # fmt: skip
                bad += 1
            for case_no, raw in enumerate(malformed.RAW_BODIES):
                tag = f"{tenant}-raw-{r}-{case_no}"
                producer.publish(raw.body(tag), routing_key=cluster.queue, declare=[target], retry=True,
                                 content_type=raw.content_type, content_encoding=raw.content_encoding,
                                 headers=raw.headers(tag))  # fmt: skip
                bad += 1
            time.sleep(1.0)
        counts = cluster.settle({"p0": good}, DRAIN_TIMEOUT_S)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (letters := _dead_letter_count(cluster.database_url, tenant)) < bad and time.monotonic() < deadline:
            time.sleep(1.0)
        _alive(worker, "the worker", problems)
    # Every bad item is one dead letter: the good events must all be stored, the bad ones all dead-lettered.
    counts.sent = good + bad
    counts.dead_lettered = letters
    counts.lost += max(0, bad - letters)
    notes = [
        f"{good} good events and {bad} bad items ({len(malformed.BAD_ROWS)} kinds of row,"
        f" {len(malformed.BAD_MESSAGES)} of message, {len(malformed.RAW_BODIES)} of raw body) in {rounds} rounds"
    ]
    return Outcome("bad_input", "redis", counts, 0, notes, expected_dead_lettered=bad, problems=problems)


def _dead_letter_count(database_url: str, marker: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT count(*) FROM dead_letters WHERE payload LIKE :p"), {"p": f"%{marker}%"}
            ).scalar_one()
    finally:
        engine.dispose()
