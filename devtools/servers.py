"""Private server instances on spare ports, for tests and benchmarks that stop or kill a server.

The machine's shared services are never stopped by a test or a benchmark: one
that needs a broker or a database to go down starts its own here and stops that one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from devtools.processes import REPO_ROOT, ManagedProcess, file_tail, port_open, spare_port

START_TIMEOUT_S = 15.0


class PrivateRedis:
    """A redis-server of our own: start, stop (the fault) and start again."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or spare_port()
        self.workdir = workdir
        self._process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Persist like a production broker would (AOF), so a restart keeps the queue.
        self._process = ManagedProcess(
            f"private redis-server on port {self.port}",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            self.workdir / "redis-server.log", append_log=True,
        ).start()  # fmt: skip
        self._process.wait_ready(lambda: port_open(self.port), START_TIMEOUT_S, "accepting connections", 0.05)

    def stop(self) -> None:
        """SIGTERM (Redis writes its AOF and exits), SIGKILL if it takes longer than the stop timeout."""
        if self._process is not None:
            self._process.stop()
        self._process = None


# --- PostgreSQL -------------------------------------------------------------------

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # initdb refuses to run as root; the cluster belongs to this user

# Server settings of a cluster under fault injection. A client that vanishes
# (host cut off, process frozen) must not keep its transaction, and the row
# locks of its half-written batch, for the two hours of the kernel's default
# keepalive: the batch is redelivered to another worker, whose insert of the
# same keys would wait on those locks. Production servers want the same.
FAULT_TOLERANT_SETTINGS: dict[str, str] = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",  # ms: unacknowledged data to a vanished client
    "idle_in_transaction_session_timeout": "10s",  # a frozen client (SIGSTOP) answers keepalives
}


def _as_user(user: str, cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *cmd]
    return cmd


class PrivatePostgres:
    """A PostgreSQL cluster of our own: initdb in a temporary directory, any port.

    ``start``/``stop`` are the fault (``stop(mode="immediate")`` is a crash:
    WAL recovery at the next start); ``migrate`` creates the database and runs
    the project's migrations against it. ``listen`` adds addresses besides
    127.0.0.1 (e.g. a veth end for a network namespace) and ``trusted`` the
    networks allowed to connect from them.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        database: str = "analytics",
        listen: tuple[str, ...] = (),
        trusted: tuple[str, ...] = (),
        settings: dict[str, str] | None = None,
    ) -> None:
        self.port = port or spare_port()
        self.database = database
        self.listen = ("127.0.0.1", *listen)
        self.trusted = trusted
        self.settings = {**FAULT_TOLERANT_SETTINGS, **(settings or {})}
        # Not under pytest's tmp_path: its parents are private to root and
        # the server runs as postgres.
        self.workdir = Path(tempfile.mkdtemp(prefix="private-pg-"))
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self._initialized = False
        if os.geteuid() == 0:
            shutil.chown(self.workdir, PG_USER, PG_USER)

    def url(self, *, host: str = "127.0.0.1", database: str | None = None, application_name: str | None = None) -> str:
        query = f"?application_name={application_name}" if application_name else ""
        return f"postgresql+psycopg2://postgres@{host}:{self.port}/{database or self.database}{query}"

    def _run(self, cmd: list[str], timeout: float = 60) -> None:
        done = subprocess.run(_as_user(PG_USER, cmd), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{self.log_tail()}"
            )

    def _initdb(self) -> None:
        self._run([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", PG_USER, "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"])  # fmt: skip
        if self.trusted:
            with open(self.datadir / "pg_hba.conf", "a") as hba:
                for network in self.trusted:
                    hba.write(f"host all all {network} trust\n")
        self._initialized = True

    def start(self) -> None:
        if not self._initialized:
            self._initdb()
        options = [f"-p {self.port}", f"-k {self.workdir}", f"-c listen_addresses={','.join(self.listen)}"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                   "-o", " ".join(options), "-w", "-t", "60", "start"], timeout=90)  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clients disconnected) or ``immediate`` (a crash)."""
        if self.running():
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"],
                      timeout=90)  # fmt: skip

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def migrate(self) -> None:
        """Create the database and migrate it to head (``python -m cli migrate``), in a subprocess."""
        env = {**os.environ, "DATABASE_URL": self.url()}
        done = subprocess.run([sys.executable, "-m", "cli", "migrate"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"migrations failed on the private PostgreSQL:\n{done.stdout}{done.stderr}")

    def log_tail(self, lines: int = 20) -> str:
        return file_tail(self.logfile, lines)

    def close(self) -> None:
        """Stop (as a crash: nothing to keep) and delete the cluster."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- RabbitMQ ---------------------------------------------------------------------

RABBITMQ_SBIN = Path(os.environ.get("RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))
RABBITMQ_START_TIMEOUT_S = 90.0


class PrivateRabbitMQ:
    """A RabbitMQ node of our own: its own node name, ports, data, logs and cookie.

    Runs the server script from ``RABBITMQ_SBIN`` directly (the /usr/sbin
    wrapper would switch to the system's rabbitmq user and its cookie); the
    node registers with the machine's epmd, which is only a name service.
    Data survives ``stop``/``start``: durable queues and persistent messages
    are there again, as after a real broker restart. ``heartbeat`` (seconds)
    is the server's proposal; clients negotiate the smaller of theirs and it,
    which bounds how long a vanished client holds unacknowledged messages.
    """

    def __init__(self, *, port: int | None = None, listen: tuple[str, ...] = (), heartbeat: int | None = None) -> None:
        self.port = port or spare_port()
        self.dist_port = spare_port()
        self.nodename = f"private-{uuid.uuid4().hex[:10]}@localhost"
        self.workdir = Path(tempfile.mkdtemp(prefix="private-rabbitmq-"))
        self.logfile = self.workdir / "server.out"
        self._process: ManagedProcess | None = None
        home = self.workdir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        config = [f"listeners.tcp.{n} = {address}:{self.port}" for n, address in enumerate(("127.0.0.1", *listen), 1)]
        config += ["loopback_users = none"]  # guest may connect through a veth address too
        if heartbeat is not None:
            config.append(f"heartbeat = {heartbeat}")
        (self.workdir / "rabbitmq.conf").write_text("\n".join(config) + "\n")
        self._env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_PID_FILE": str(self.workdir / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
        }

    @property
    def url(self) -> str:
        return self.url_via("127.0.0.1")

    def url_via(self, host: str) -> str:
        return f"amqp://guest:guest@{host}:{self.port}//"

    def start(self) -> None:
        # Its own group (ManagedProcess): beam and its helpers go with it.
        self._process = ManagedProcess(
            f"private RabbitMQ {self.nodename}", [str(RABBITMQ_SBIN / "rabbitmq-server")], self.logfile,
            env=self._env, cwd=self.workdir, append_log=True,
        ).start()  # fmt: skip
        try:
            self._process.wait_ready(self._accepts_amqp, RABBITMQ_START_TIMEOUT_S, "accepting AMQP", 0.2)
        except BaseException:
            self._kill()
            raise

    def _accepts_amqp(self) -> bool:
        if not port_open(self.port):
            return False
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=0)
            return True
        except Exception:  # noqa: BLE001 - still booting
            return False

    def stop(self) -> None:
        """``rabbitmqctl stop`` (a clean shutdown), then SIGKILL of whatever is left of its group."""
        if self._process is None:
            return
        if self._process.alive():
            try:
                subprocess.run([str(RABBITMQ_SBIN / "rabbitmqctl"), "-n", self.nodename, "stop"],
                               env=self._env, capture_output=True, timeout=60)  # fmt: skip
                self._process.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self._kill()

    def _kill(self) -> None:
        if self._process is None:
            return
        self._process.kill_group(signal.SIGKILL)
        self._process = None
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        return file_tail(self.logfile, lines)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
