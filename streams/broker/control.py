"""Start, stop and inspect one local Apache Kafka broker (KRaft, combined broker+controller).

Nothing here reads the environment: :class:`LocalBroker` takes plain values (the command
line builds them from :class:`streams.settings.Settings`).

Layout of the broker folder (``Settings.broker_dir``, normally ``.sieve/broker``)::

    lib/                 the broker's jars; ``lib/.complete`` marks a finished fetch
    server.properties    written on every start from the ports given
    log4j2.properties
    data/                KRaft metadata and topic logs (formatted once)
    logs/server.log      the broker's own log (size-rolled); logs/stdout.log: the JVM's
    broker.pid

Contracts: ``start`` is idempotent (a running broker of this folder is reused), returns only
once the broker answers a metadata request, and never leaves a half-fetched ``lib/`` behind;
``stop`` only signals a process whose command line is this folder's broker, so a stale pid
file can never kill an unrelated process.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ConfigurationError, SieveError
from streams.kafka_clients import admin_client

POM = Path(__file__).with_name("pom.xml")
LOOPBACK = "127.0.0.1"
MIN_JAVA = 17
HEAP = ("-Xms128m", "-Xmx512m")  # the machine's 2 cores and memory are shared with workers
# Kafka's own kafka-run-class.sh flags (G1 with 20 ms pauses, the C2 compiler) suit a
# many-core server. Here the broker shares 2 cores with a worker and a generator, so what it
# costs is CPU seconds: the serial collector and the C1 compiler alone measured 19 -> 6 CPU
# us per record produced, 6 -> 2.4 per record consumed, and 10.6 -> 5.0 CPU s to start
# (300,000 demo records, 6 partitions, this 2-core machine); the format tool 3.4 -> 1.9 s.
JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_MAVEN_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"

Progress = Callable[[str], None]


class BrokerError(SieveError):
    """The local broker failed to start or stop; ``log_file`` holds the broker's side."""

    def __init__(self, message: str, log_file: Path | None = None) -> None:
        self.log_file = log_file
        super().__init__(message + (f" (see {log_file})" if log_file else ""))


class PortTakenError(ConfigurationError):
    """A port the broker needs is in use by another process; ``port`` says which."""

    def __init__(self, port: int) -> None:
        self.port = port
        super().__init__(
            f"port {port} on {LOOPBACK} is taken by another process: stop it or set"
            " SIEVE_BROKER_PORT / SIEVE_BROKER_CONTROLLER_PORT"
        )


@dataclass(frozen=True)
class BrokerStatus:
    """What ``status()`` found. ``answering`` means it answered a metadata request."""

    running: bool
    answering: bool
    pid: int | None
    bootstrap_servers: str
    version: str | None
    log_file: Path


def _no_progress(_: str) -> None:
    return None


def broker_version(lib_dir: Path) -> str:
    """The Kafka version of the jars in ``lib_dir``, as Kafka's ``AppInfoParser`` reads it.

    Raises ``ConfigurationError`` when the jars are not there (fetch them with ``start``).
    """
    clients = sorted(lib_dir.glob("kafka-clients-*.jar"))
    if not clients:
        raise ConfigurationError(f"no Kafka jars in {lib_dir}: run `sieve broker start` once")
    with zipfile.ZipFile(clients[0]) as jar:
        text = jar.read("kafka/kafka-version.properties").decode("utf-8")
    match = re.search(r"^version=(\S+)", text, re.MULTILINE)
    if match is None:  # a repackaged jar: fall back on the file name
        return clients[0].stem.removeprefix("kafka-clients-")
    return match.group(1)


def answers_metadata(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    """True iff a broker at ``bootstrap_servers`` answered a metadata request in time and
    lists at least one broker (an unfenced broker can serve clients)."""
    timeout_ms = max(100, int(timeout_s * 1000))
    try:
        admin = admin_client(
            bootstrap_servers=bootstrap_servers,
            client_id="sieve-broker-probe",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except Exception:  # any failure to bootstrap means "not answering"
        return False
    try:
        cluster = admin.describe_cluster()
        return bool(cluster.get("brokers"))
    except Exception:
        return False
    finally:
        admin.close()


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True iff nothing listens on ``host:port`` (we could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As Kafka binds: a port left in TIME_WAIT by a broker stopped a moment ago is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free right now (all held open together while chosen)."""
    with contextlib.ExitStack() as held:
        probes = [held.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def java_major_version(java: str) -> int:
    """The major version of ``java`` (``1.8`` -> 8, ``17.0.15`` -> 17)."""
    done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        raise ConfigurationError(f"cannot tell the version of {java}: {done.stderr.strip()}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """The ``java`` on PATH, checked to be 17 or newer (Kafka 4 brokers need 17)."""
    java = shutil.which("java")
    if java is None:
        raise ConfigurationError(
            f"`java` not found: the local Kafka broker needs Java {MIN_JAVA}+ "
            "(e.g. `apt-get install openjdk-17-jre-headless`)"
        )
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise ConfigurationError(
            f"{java} is Java {major}; the local Kafka broker needs Java {MIN_JAVA}+"
        )
    return java


def _new_cluster_id() -> str:
    # Kafka's Uuid.toString: URL-safe base64 of the 16 bytes, no padding. An id starting
    # with "-" reads as an option to kafka-storage (`format --cluster-id -x...` fails, about
    # one start in 64); Kafka's own Uuid.randomUuid never makes one, so neither do we.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two test sessions sharing one jar cache must not
    fetch into it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    """True iff ``pid`` runs (a zombie child is reaped and counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _tail(path: Path, offset: int = 0, lines: int = 15) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class LocalBroker:
    """One single-node KRaft broker living in ``broker_dir``, listening on loopback only.

    ``lib_dir`` (default ``broker_dir/lib``) may be shared between brokers: the test
    session keeps its data in a temporary folder but reuses the repository's jar cache.
    """

    def __init__(
        self,
        broker_dir: Path,
        port: int,
        controller_port: int,
        *,
        lib_dir: Path | None = None,
    ) -> None:
        if port == controller_port:
            raise ConfigurationError(
                f"the broker port and the controller port are both {port}: set"
                " SIEVE_BROKER_PORT and SIEVE_BROKER_CONTROLLER_PORT apart"
            )
        self.broker_dir = broker_dir.absolute()
        self.port = port
        self.controller_port = controller_port
        self.lib_dir = (lib_dir or broker_dir / "lib").absolute()
        self.data_dir = self.broker_dir / "data"
        self.logs_dir = self.broker_dir / "logs"
        self.config_file = self.broker_dir / "server.properties"
        self.log4j_file = self.broker_dir / "log4j2.properties"
        self.pid_file = self.broker_dir / "broker.pid"
        self.log_file = self.logs_dir / "server.log"
        self.stdout_file = self.logs_dir / "stdout.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offsets = (0, 0)  # sizes of the logs at launch: errors show this run only

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    # --- jars ------------------------------------------------------------------------------
    def jars_cached(self) -> bool:
        """True iff ``lib_dir`` holds a complete fetch of the current ``pom.xml``."""
        marker = self.lib_dir / ".complete"
        return marker.exists() and marker.read_text().strip() == _pom_digest()

    def fetch_jars(self, timeout_s: float = 900.0) -> bool:
        """Resolve the broker's jars into ``lib_dir`` with Maven; False if already cached.

        Maven's own cache (~/.m2) is left where it is so every checkout shares it. The jars
        land in a temporary folder renamed into place, so an interrupted fetch is redone.
        """
        if self.jars_cached():
            return False
        with _locked(self.lib_dir.with_name(self.lib_dir.name + ".lock")):
            if self.jars_cached():  # another process fetched while we waited
                return False
            mvn = shutil.which("mvn")
            if mvn is None:
                raise ConfigurationError(
                    "`mvn` not found: Maven fetches the Kafka broker from Maven Central"
                    " (e.g. `apt-get install maven`)"
                )
            staging = self.lib_dir.with_name(f"{self.lib_dir.name}.tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            command = [
                mvn, "-B", "-q", "--no-transfer-progress", "-Dstyle.color=never",
                "-f", str(POM), "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
            ]  # fmt: skip
            # Maven's JVM too runs a few seconds: C1 and the serial collector halve its CPU
            # (8.6 -> 4.5 s, 15 -> 8 s here, every jar in ~/.m2). A user's MAVEN_OPTS wins.
            env = {**os.environ, "MAVEN_OPTS": os.environ.get("MAVEN_OPTS", _MAVEN_OPTS)}
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=timeout_s, env=env
                )
            except subprocess.TimeoutExpired as late:
                raise BrokerError(f"Maven did not fetch the broker in {timeout_s:.0f} s") from late
            if done.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
                shutil.rmtree(staging, ignore_errors=True)
                output = (done.stdout + done.stderr).strip()[-2000:]
                raise BrokerError(f"Maven could not fetch the Kafka broker:\n{output}")
            (staging / ".complete").write_text(_pom_digest() + "\n")
            shutil.rmtree(self.lib_dir, ignore_errors=True)
            staging.rename(self.lib_dir)
        return True

    def version(self) -> str | None:
        """The Kafka version of the cached jars, or None before the first fetch."""
        return broker_version(self.lib_dir) if self.jars_cached() else None

    # --- lifecycle -------------------------------------------------------------------------
    def running_pid(self) -> int | None:
        """The pid of this folder's broker if it runs; a stale pid file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _pid_alive(pid) and self._is_ours(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def _is_ours(self, pid: int) -> bool:
        # A pid is recycled after the broker dies; only a java running our config is ours.
        if self._process is not None and self._process.pid == pid:
            return True
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.parent.exists():  # no procfs (macOS): trust the pid file
            return True
        try:
            raw = cmdline.read_bytes()
        except OSError:
            return False
        if not raw:  # mid-exec, the kernel shows no arguments yet: cannot tell, assume ours
            return True
        args = raw.split(b"\0")
        return MAIN_CLASS.encode() in args and str(self.config_file).encode() in args

    def status(self, probe_timeout_s: float = 2.0) -> BrokerStatus:
        """Whether this folder's broker runs and answers; never starts or stops anything."""
        pid = self.running_pid()
        answering = pid is not None and answers_metadata(self.bootstrap_servers, probe_timeout_s)
        return BrokerStatus(
            running=pid is not None,
            answering=answering,
            pid=pid,
            bootstrap_servers=self.bootstrap_servers,
            version=self.version(),
            log_file=self.log_file,
        )

    def start(
        self,
        timeout_s: float = 60.0,
        *,
        fetch_timeout_s: float = 900.0,
        progress: Progress = _no_progress,
    ) -> BrokerStatus:
        """Fetch (once), configure, format (once) and launch the broker; return when it
        answers a metadata request. ``timeout_s`` bounds the wait after launching.

        Raises ``ConfigurationError`` (java/mvn missing; ``PortTakenError``) or
        ``BrokerError`` (it exited or did not answer in time; the message has its log).
        """
        java = find_java()
        if self.running_pid() is not None:
            progress("already running; waiting until it answers")
            self._wait_until_answering(timeout_s)
            return self.status()
        for port in (self.port, self.controller_port):
            if not port_is_free(port):
                raise PortTakenError(port)
        if not self.jars_cached():
            progress("fetching the Kafka broker from Maven Central (first run only)")
            self.fetch_jars(fetch_timeout_s)
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            progress("formatting the KRaft storage (first run only)")
            self._format_storage(java)
        progress(f"launching Kafka {self.version()}")
        self._launch(java)
        progress(f"waiting for Kafka at {self.bootstrap_servers}")
        self._wait_until_answering(timeout_s)
        return self.status()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM the broker (a clean shutdown), SIGKILL it after ``timeout_s``; False if it
        was not running. The pid file is gone afterwards."""
        pid = self.running_pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout_s):
            self._signal(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10.0):
                raise BrokerError(f"the broker (pid {pid}) survived SIGKILL", self.log_file)
        self.pid_file.unlink(missing_ok=True)
        self._process = None
        return True

    # --- faults (tests) ---------------------------------------------------------------------
    def pause(self) -> None:
        """SIGSTOP the broker: it keeps its sockets but answers nothing (a stalled machine)."""
        self._signal(self._pid_or_fail(), signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        self._signal(self._pid_or_fail(), signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no clean shutdown); returns once it is gone."""
        pid = self._pid_or_fail()
        self._signal(pid, signal.SIGKILL)
        if not self._wait_gone(pid, 30.0):
            raise BrokerError(f"the broker (pid {pid}) survived SIGKILL", self.log_file)
        self.pid_file.unlink(missing_ok=True)
        self._process = None

    def _pid_or_fail(self) -> int:
        pid = self.running_pid()
        if pid is None:
            raise BrokerError("the broker is not running", self.log_file)
        return pid

    # --- internals -------------------------------------------------------------------------
    def _signal(self, pid: int, signum: signal.Signals) -> None:
        # The broker leads its own process group (start_new_session): signal the group so
        # nothing it spawned outlives it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=0.2)
                    return True
            elif not _pid_alive(pid):
                return True
            else:
                time.sleep(0.1)
        return False

    def _write_config(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            render_server_properties(self.port, self.controller_port, self.data_dir)
        )
        self.log4j_file.write_text(render_log4j2_properties(self.log_file))

    def _format_storage(self, java: str) -> None:
        command = [
            java, *HEAP, *JVM_FLAGS, f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp", f"{self.lib_dir}/*", STORAGE_TOOL,
            "format", "--config", str(self.config_file), "--cluster-id", _new_cluster_id(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            output = (done.stdout + done.stderr).strip()[-2000:]
            raise BrokerError(f"formatting the broker storage failed:\n{output}")

    def _launch(self, java: str) -> None:
        command = [
            java, *HEAP, *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp", f"{self.lib_dir}/*", MAIN_CLASS, str(self.config_file),
        ]  # fmt: skip
        self._log_offsets = (_size(self.log_file), _size(self.stdout_file))
        with self.stdout_file.open("ab") as out:
            # Its own session: Ctrl-C in the shell that ran `sieve broker start` must not
            # reach the broker, and stop() can signal the whole group.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.broker_dir,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._process.pid}\n")

    def _wait_until_answering(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid = self.running_pid()
            if pid is None:
                detail = _tail(self.log_file, self._log_offsets[0]) or _tail(
                    self.stdout_file, self._log_offsets[1]
                )
                raise BrokerError(f"the broker exited while starting:\n{detail}", self.log_file)
            # A cheap TCP check first: the metadata probe costs a client bootstrap.
            if not port_is_free(self.port):
                remaining = max(0.5, min(5.0, deadline - time.monotonic()))
                if answers_metadata(self.bootstrap_servers, remaining):
                    return
            time.sleep(0.1)
        raise BrokerError(
            f"the broker did not answer at {self.bootstrap_servers} within {timeout_s:.0f} s",
            self.log_file,
        )


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def render_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """The broker's ``server.properties``: one KRaft node, loopback only, every internal
    topic at replication factor 1 (a single broker cannot hold more replicas)."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # A static voter set (not `format --standalone`): the quorum is read from this file
        # on every start, so changing the controller port later needs no re-format.
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "offsets.topic.replication.factor": "1",
        # Fewer offsets partitions than the default 50: the first consumer group on a fresh
        # broker creates them all, which costs seconds on a 2-core machine.
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created with their configs by `sieve topics`; a typo must not silently
        # create a topic with default retention.
        "auto.create.topics.enable": "false",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def render_log4j2_properties(log_file: Path) -> str:
    """log4j2 configuration: INFO to ``log_file``, rolled at 20 MB, three files kept."""
    return "\n".join(
        [
            "status = warn",
            "appender.file.type = RollingFile",
            "appender.file.name = file",
            f"appender.file.fileName = {log_file}",
            f"appender.file.filePattern = {log_file}.%i",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 20MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 3",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = file",
            "",
        ]
    )


def start_on_free_ports(
    broker_dir: Path, lib_dir: Path | None, timeout_s: float, attempts: int = 3
) -> LocalBroker:
    """A started broker on free loopback ports (tests, benchmarks: beside any other broker).

    A port taken between choosing and binding it (another session starting at the same
    time) is retried with new ports.
    """
    for attempt in range(1, attempts + 1):
        port, controller_port = free_ports(2)
        broker = LocalBroker(broker_dir, port, controller_port, lib_dir=lib_dir)
        try:
            broker.start(timeout_s)
            return broker
        except PortTakenError:
            if attempt == attempts:
                raise
        except SieveError:
            broker.stop()  # it may have launched before failing to answer
            raise
    raise AssertionError("unreachable")
