"""Private Redis, RabbitMQ and PostgreSQL instances for the delivery scenarios (standard library only).

Each runs on ports of its own with its data in a temporary directory, so a scenario can stop
and restart it without touching the machine's shared services. The RabbitMQ node shares the
machine's epmd (that is fine); it gets its own node name, cookie ($HOME), config and plugins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Debian/Ubuntu's /usr/sbin/rabbitmq-* wrappers `su` to the rabbitmq user and drop the
# environment that makes the node private; the real scripts live here.
RABBITMQ_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/bin"))


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(port: int, *, up: bool, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while port_open(port) != up:
        if time.monotonic() > deadline:
            state = "closed" if up else "open"
            raise ServiceError(f"{what}: port {port} still {state} after {within} s")
        time.sleep(0.1)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def rabbitmq_binaries() -> tuple[Path, Path] | None:
    for directory in RABBITMQ_BIN_DIRS:
        server, ctl = directory / "rabbitmq-server", directory / "rabbitmqctl"
        if server.exists() and ctl.exists():
            return server, ctl
    server_path, ctl_path = shutil.which("rabbitmq-server"), shutil.which("rabbitmqctl")
    if server_path and ctl_path:
        return Path(server_path), Path(ctl_path)
    return None


class PrivateRedis:
    """redis-server on a free port; append-only file on, so a restart keeps the streams."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise ServiceError("redis-server is not on PATH")
        self.binary = binary
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            # AOF: a restart (SIGTERM flushes it) must keep every stream, group and PEL entry.
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, start_new_session=True)
        wait_port(self.port, up=True, within=30, what="private redis-server")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        wait_port(self.port, up=False, within=10, what="private redis-server")

    def restart(self) -> None:
        self.stop()
        self.start()

    def describe(self) -> dict[str, object]:
        return {"kind": "redis", "pid": self.process.pid if self.process else None}


class PrivateRabbitMQ:
    """A RabbitMQ node of its own: node name, ports, data, config and Erlang cookie."""

    def __init__(self, workdir: Path, name: str) -> None:
        binaries = rabbitmq_binaries()
        if binaries is None:
            raise ServiceError("rabbitmq-server / rabbitmqctl not found")
        self.server, self.ctl = binaries
        self.node = f"{name}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.base = workdir / "rabbitmq"
        home = self.base / "home"
        home.mkdir(parents=True, exist_ok=True)
        plugins = self.base / "enabled_plugins"
        plugins.write_text("")
        env_file = self.base / "rabbitmq-env.conf"
        env_file.write_text("")
        config = self.base / "rabbitmq.conf"
        # The machine's /etc/rabbitmq/rabbitmq.conf may pin 5672: this node reads its own.
        config.write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            # No busy-waiting schedulers: on a 2-core machine shared with the other checks,
            # spinning Erlang schedulers take CPU that the tests' own processes need.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        subprocess.run(
            [str(self.server), "-detached"],
            env=self.env,
            check=True,
            capture_output=True,
            cwd=self.base,
        )
        try:
            wait_port(self.port, up=True, within=90, what=f"RabbitMQ node {self.node}")
        except ServiceError as exc:
            raise ServiceError(f"{exc}\n{self.log_tail()}") from exc

    def stop(self) -> None:
        subprocess.run(
            [str(self.ctl), "-n", self.node, "stop"],
            env=self.env,
            check=False,
            capture_output=True,
            timeout=60,
        )
        wait_port(self.port, up=False, within=30, what=f"RabbitMQ node {self.node}")

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        logs = sorted((self.base / "log").glob("*.log"))
        text = "\n".join(log.read_text(errors="replace") for log in logs)
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> dict[str, object]:
        return {
            "kind": "rabbitmq",
            "node": self.node,
            "ctl": str(self.ctl),
            "home": self.env["HOME"],
            "port": self.port,
        }


def postgres_binaries() -> tuple[str, str] | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    return (initdb, pg_ctl) if initdb and pg_ctl else None


class PrivatePostgres:
    """A PostgreSQL cluster of its own (initdb + pg_ctl) on a free port, trust auth for
    user postgres. Run as the `postgres` system user when this process is root (PostgreSQL
    refuses to run as root), with its data outside the root-only pytest temp tree."""

    def __init__(self) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            raise ServiceError("initdb / pg_ctl are not on PATH")
        self.initdb, self.pg_ctl = binaries
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="private-postgres-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.base, "postgres")
        self._run([self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--no-sync"])  # fmt: skip

    def _run(self, command: list[str], timeout: float = 120) -> None:
        done = subprocess.run(
            [*self.as_user, *command], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise ServiceError(f"{command[0]} failed:\n{done.stdout}\n{done.stderr}")

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base}"
            " -c fsync=off -c synchronous_commit=off"
        )
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", "60", "start"])  # fmt: skip
        wait_port(self.port, up=True, within=30, what="private PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])
        wait_port(self.port, up=False, within=30, what="private PostgreSQL")

    def restart(self) -> None:
        """A fast shutdown (every session is terminated, as in a failover) and a start."""
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        """The postmaster and all its children (backends, background processes)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return []
        postmaster = int(pid_file.read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *map(int, children)]

    def remove(self) -> None:
        with contextlib.suppress(ServiceError, subprocess.TimeoutExpired):
            if port_open(self.port):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def describe(self) -> dict[str, object]:
        return {"kind": "postgres", "pg_ctl": self.pg_ctl, "data": str(self.data),
                "base": str(self.base), "as_user": self.as_user, "port": self.port}  # fmt: skip


def clean_up_leftovers(workdir: Path) -> None:
    """Stop what a scenario in `workdir` started, if it died without stopping it: the process
    groups of its API and workers, and its private services."""
    groups = workdir / "process-groups"
    if groups.exists():
        for line in groups.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(line), signal.SIGKILL)
    record = workdir / "services.json"
    if not record.exists():
        return
    for service in json.loads(record.read_text()):
        if service.get("kind") == "redis" and service.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(service["pid"]), signal.SIGKILL)
        elif service.get("kind") == "postgres":
            if port_open(int(service["port"])):
                subprocess.run(
                    [*service["as_user"], service["pg_ctl"], "-D", service["data"], "-m",
                     "immediate", "-w", "stop"],
                    check=False, capture_output=True, timeout=60,
                )  # fmt: skip
            shutil.rmtree(service["base"], ignore_errors=True)
        elif service.get("kind") == "rabbitmq" and port_open(int(service["port"])):
            subprocess.run(
                [service["ctl"], "-n", service["node"], "stop"],
                env={**os.environ, "HOME": service["home"]},
                check=False,
                capture_output=True,
                timeout=60,
            )
