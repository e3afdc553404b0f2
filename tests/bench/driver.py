"""The measurements of tests/bench/run.py, run inside the bench venv (see run.py).

Every throughput trial uses a fresh queue: the tasks are sent first, then the workers start,
and the rate is counted while every worker process is busy (see `steady_rate`), so neither
start-up time nor the sender's CPU use enters it. Comparisons run interleaved (A, B, A, B)
and report medians: the machine is shared and its load varies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

HERE = Path(__file__).resolve().parent
RUN_ID = uuid.uuid4().hex[:8]
# Logs and metrics files of the processes started; beside the config (run.py removes both).
LOG_DIR = Path(tempfile.gettempdir())
_counter = 0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Arithmetic (pure)
# ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def steady_rate(samples: list[tuple[int, float, float]]) -> tuple[float, int]:
    """Tasks per second while every worker process was busy, and how many tasks that counts.

    samples: (pid, sent_at, started_at). The window runs from the moment the last process to
    start took its first task to the moment the first process to run dry took its last one.
    """
    by_pid: dict[int, list[float]] = {}
    for pid, _sent, started in samples:
        by_pid.setdefault(pid, []).append(started)
    begin = max(min(times) for times in by_pid.values())
    end = min(max(times) for times in by_pid.values())
    inside = sum(1 for _pid, _sent, started in samples if begin <= started <= end)
    if end - begin < 0.05 or inside < 100:
        # Too short a window (one process did nearly everything): the whole run instead.
        starts = [started for _pid, _sent, started in samples]
        return len(samples) / max(max(starts) - min(starts), 1e-9), len(samples)
    return inside / (end - begin), inside


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the group this service started in, then SIGKILL what is left."""
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=20)
        time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def start(command: list[str], env: dict[str, str], cwd: Path, name: str) -> Service:
    log_path = LOG_DIR / f"{name}.log"
    handle = log_path.open("ab")
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return Service(process, log_path)


def children(pid: int) -> list[int]:
    """The worker processes of a worker's main process: its children running the same
    command line (not helpers such as multiprocessing's resource tracker)."""
    try:
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for kid in map(int, kids):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{kid}/cmdline").read_bytes() == own:
                found.append(kid)
    return found


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                pending.extend(int(kid) for kid in (task / "children").read_text().split())
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: pages shared with other processes (a forking parent's imports)
    count divided among them."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------
# The contenders
# ---------------------------------------------------------------------------------------------


@dataclass
class Config:
    python: str
    redis_url: str
    rabbitmq_url: str
    database_urls: dict[str, str]  # broker -> the database of that project
    projects: dict[str, Path]  # broker -> rendered project dir
    packages: dict[str, str]  # broker -> package name
    result_backends: dict[str, str]  # broker -> "redis" | "none"
    workers: int
    concurrency: int
    redis_host: str
    redis_port: int
    redis_db: int
    # The `db` section's databases (broker -> URL) on a private PostgreSQL cluster, and that
    # cluster's data directory (its postmaster.pid names the processes whose CPU is counted).
    db_database_urls: dict[str, str] = field(default_factory=dict)
    postgres_data: str = ""


def new_queue(label: str) -> str:
    global _counter
    _counter += 1
    return f"bench-{RUN_ID}-{label}-{_counter}"


def base_env(cfg: Config, queue: str) -> dict[str, str]:
    paths = [str(HERE), *(str(p / "src") for p in cfg.projects.values())]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TASKIQ_", "BENCH_"))},
        "PYTHONPATH": os.pathsep.join(paths),
        "PYTHONDONTWRITEBYTECODE": "1",
        "BENCH_REDIS_URL": cfg.redis_url,
        "BENCH_RABBITMQ_URL": cfg.rabbitmq_url,
        "BENCH_QUEUE": queue,
        "BENCH_PROBE_KEY": f"{queue}:probe",
        "BENCH_CONCURRENCY": str(cfg.concurrency),
    }


def generated_env(cfg: Config, broker: str, queue: str, **extra: str) -> dict[str, str]:
    """The environment of a generated worker (or, without the metrics variables, API)."""
    metrics_dir = LOG_DIR / f"metrics-{queue}"
    env = base_env(cfg, queue)
    env.update(
        {
            "BENCH_PACKAGE": cfg.packages[broker],
            "DATABASE_URL": cfg.database_urls[broker],
            "TASKIQ_ENABLED": "true",
            "TASKIQ_BROKER_TYPE": broker,
            "TASKIQ_QUEUE_NAME": queue,
            "TASKIQ_WORKER_CONCURRENCY": str(cfg.workers),
            "TASKIQ_MAX_TASKS_PER_WORKER": str(cfg.concurrency),
            "TASKIQ_REDIS_HOST": cfg.redis_host,
            "TASKIQ_REDIS_PORT": str(cfg.redis_port),
            "TASKIQ_REDIS_DB": str(cfg.redis_db),
            "TASKIQ_RABBITMQ_HOST": "127.0.0.1",
            "TASKIQ_RABBITMQ_PORT": "5672",
            "TASKIQ_RABBITMQ_USER": "guest",
            "TASKIQ_RABBITMQ_PASSWORD": "guest",
            "TASKIQ_RABBITMQ_VHOST": "/",
            # Metrics on, as shipped, but on a port and in a directory of this trial's own.
            "TASKIQ_METRICS_PORT": str(free_port()),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
    )
    env.update(extra)
    return env


@dataclass
class Contender:
    """One kind of worker: how to fill its queue and how to start it."""

    name: str
    broker: str
    fill: Callable[[str, int], Awaitable[None]]
    command: Callable[[str], tuple[list[str], dict[str, str], Path]]
    processes: int


_generated_modules: dict[str, Any] = {}


def generated_module(cfg: Config, broker: str, name: str) -> Any:
    """A module of a generated package, imported in this process (tasks are registered on
    an in-memory broker: TASKIQ_ENABLED is false here)."""
    os.environ["TASKIQ_ENABLED"] = "false"
    os.environ["DATABASE_URL"] = cfg.database_urls[broker]
    os.environ["BENCH_PACKAGE"] = cfg.packages[broker]
    key = f"{cfg.packages[broker]}.{name}"
    if key not in _generated_modules:
        _generated_modules[key] = importlib.import_module(key)
    return _generated_modules[key]


def generated_client(cfg: Config, broker: str, queue: str) -> Any:
    """The generated project's own broker (its middlewares included), on `queue`."""
    settings_module = generated_module(cfg, broker, "infrastructure.config.settings")
    brokers = generated_module(cfg, broker, "infrastructure.taskiq.brokers")
    settings = settings_module.Settings(
        taskiq_enabled=True,
        taskiq_broker_type=broker,
        taskiq_queue_name=queue,
        taskiq_redis_host=cfg.redis_host,
        taskiq_redis_port=cfg.redis_port,
        taskiq_redis_db=cfg.redis_db,
        database_url=cfg.database_urls[broker],
        taskiq_max_tasks_per_worker=cfg.concurrency,
        _env_file=None,
    )
    return brokers.build_broker(settings)


async def kick_all(
    broker: Any, labels: dict[str, Any], count: int, task_name: str = "bench:noop"
) -> None:
    from taskiq.kicker import AsyncKicker

    await broker.startup()
    try:
        kicker = AsyncKicker(task_name=task_name, broker=broker, labels=labels)
        # 50 at a time, as a busy API process might send them (the generated client's
        # pending-state writes of concurrent sends share round trips).
        for start_at in range(0, count, 50):
            batch = min(50, count - start_at)
            await asyncio.gather(*(kicker.kiq(time.time()) for _ in range(batch)))
    finally:
        await broker.shutdown()


def contenders(cfg: Config, broker: str, without: str = "") -> dict[str, Contender]:
    py = cfg.python
    project = cfg.projects[broker]
    package = cfg.packages[broker]

    async def fill_generated(queue: str, count: int) -> None:
        sys.path[:0] = [str(HERE), str(project / "src")]
        registry = generated_module(cfg, broker, "infrastructure.taskiq.registry")
        if "bench:noop" not in registry.task_registry:
            # Registered as bench_generated does in the worker: the labels are the same.
            async def noop(sent_at: float) -> None: ...

            registry.register_task("bench:noop")(noop)
        labels = dict(registry.task_registry["bench:noop"].labels)
        await kick_all(generated_client(cfg, broker, queue), labels, count)

    def generated_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
        env = generated_env(cfg, broker, queue, BENCH_WITHOUT=without)
        return (
            [py, "-m", f"{package}.worker", "bench_generated"],
            env,
            project,
        )

    async def fill_bare(queue: str, count: int) -> None:
        sys.path.insert(0, str(HERE))
        import bench_bare

        client = bench_bare.make_broker(
            broker, queue, result_backend=cfg.result_backends[broker], concurrency=cfg.concurrency
        )
        await kick_all(client, {}, count)

    def bare_env(queue: str) -> dict[str, str]:
        env = base_env(cfg, queue)
        env.update(BENCH_BROKER=broker, BENCH_RESULT_BACKEND=cfg.result_backends[broker])
        return env

    def bare_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
        command = [py, "-m", "taskiq", "worker", "bench_bare:broker"]
        command += ["--workers", str(cfg.workers), "--max-async-tasks", str(cfg.concurrency)]
        return command, bare_env(queue), HERE

    async def fill_raw(queue: str, count: int) -> None:
        sys.path.insert(0, str(HERE))
        os.environ["BENCH_REDIS_URL"] = cfg.redis_url
        os.environ["BENCH_RABBITMQ_URL"] = cfg.rabbitmq_url
        import bench_raw

        if broker == "redis":
            await bench_raw.produce_redis(queue, count)
        else:
            await bench_raw.produce_rabbitmq(queue, count)

    def bare_db_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
        command, env, cwd = bare_command(queue)
        return command, {**env, "BENCH_DATABASE_URL": cfg.database_urls[broker]}, cwd

    def raw_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
        command = [py, str(HERE / "bench_raw.py"), "consume", broker, queue, str(cfg.workers)]
        return command, base_env(cfg, queue), HERE

    result = {
        "generated": Contender("generated", broker, fill_generated, generated_command, cfg.workers),
        "taskiq": Contender("taskiq", broker, fill_bare, bare_command, cfg.workers),
        "taskiq-db": Contender("taskiq-db", broker, fill_bare, bare_db_command, cfg.workers),
        "raw": Contender("raw", broker, fill_raw, raw_command, cfg.workers),
    }
    if broker == "redis":

        async def fill_celery(queue: str, count: int) -> None:
            sys.path.insert(0, str(HERE))
            os.environ["BENCH_REDIS_URL"] = cfg.redis_url
            os.environ["BENCH_QUEUE"] = queue
            import bench_celery

            def send() -> None:
                with bench_celery.app.producer_or_acquire() as producer:
                    for _ in range(count):
                        bench_celery.noop.apply_async(
                            args=[time.time()], queue=queue, producer=producer
                        )

            await asyncio.to_thread(send)

        def celery_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
            command = [py, "-m", "celery", "-A", "bench_celery", "worker", "-Q", queue]
            command += ["--pool=prefork", "--concurrency", str(cfg.workers)]
            command += ["--without-mingle", "--without-gossip", "--hostname", f"{queue}@bench"]
            return command, base_env(cfg, queue), HERE

        result["celery"] = Contender("celery", "redis", fill_celery, celery_command, cfg.workers)
    return result


def db_contenders(cfg: Config, broker: str) -> dict[str, Contender]:
    """The `db` section: one row-writing task (bench_rows.py) on the generated worker (its
    pooled engine), on bare taskiq with a pooled engine, and on the generated worker with
    DATABASE_NULL_POOL=true (a new connection per task)."""
    py = cfg.python
    project = cfg.projects[broker]
    package = cfg.packages[broker]
    url = cfg.db_database_urls[broker]

    async def fill_generated(queue: str, count: int) -> None:
        sys.path[:0] = [str(HERE), str(project / "src")]
        registry = generated_module(cfg, broker, "infrastructure.taskiq.registry")
        if "bench:write" not in registry.task_registry:

            async def write(sent_at: float) -> None: ...

            registry.register_task("bench:write")(write)
        labels = dict(registry.task_registry["bench:write"].labels)
        client = generated_client(cfg, broker, queue)
        await kick_all(client, labels, count, "bench:write")

    def generated_command(queue: str, **extra: str) -> tuple[list[str], dict[str, str], Path]:
        env = generated_env(cfg, broker, queue, BENCH_DB_TASK="1", DATABASE_URL=url, **extra)
        return [py, "-m", f"{package}.worker", "bench_generated"], env, project

    async def fill_bare(queue: str, count: int) -> None:
        sys.path.insert(0, str(HERE))
        import bench_bare

        client = bench_bare.make_broker(
            broker, queue, result_backend=cfg.result_backends[broker], concurrency=cfg.concurrency
        )
        await kick_all(client, {}, count, "bench:write")

    def bare_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
        command = [py, "-m", "taskiq", "worker", "bench_bare:broker"]
        command += ["--workers", str(cfg.workers), "--max-async-tasks", str(cfg.concurrency)]
        env = base_env(cfg, queue)
        env.update(
            BENCH_BROKER=broker,
            BENCH_RESULT_BACKEND=cfg.result_backends[broker],
            BENCH_DB_POOLED_URL=url,
        )
        return command, env, HERE

    def nullpool_command(queue: str) -> tuple[list[str], dict[str, str], Path]:
        return generated_command(queue, DATABASE_NULL_POOL="true")

    return {
        "db-generated": Contender("db-generated", broker, fill_generated, generated_command,
                                  cfg.workers),
        "db-taskiq-pooled": Contender("db-taskiq-pooled", broker, fill_bare, bare_command,
                                      cfg.workers),
        "db-nullpool": Contender("db-nullpool", broker, fill_generated, nullpool_command,
                                 cfg.workers),
    }  # fmt: skip


def postgres_cpu_seconds(data_dir: str) -> float:
    """CPU time of a PostgreSQL cluster: its live processes, plus what its exited backends
    used (reaped children count in the postmaster's cutime/cstime; NullPool's backends exit
    after every task)."""
    postmaster = int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return cpu_seconds([postmaster, *children(postmaster)]) + reaped


# ---------------------------------------------------------------------------------------------
# Clean-up of a queue's traces
# ---------------------------------------------------------------------------------------------


def cleanup(cfg: Config, queue: str) -> None:
    client = redis.Redis.from_url(cfg.redis_url)
    keys = list(client.scan_iter(match=f"{queue}*", count=1000))
    # kombu's bindings of a Celery queue: _kombu.binding.<queue>, _kombu.binding_permanent.<queue>
    keys += list(client.scan_iter(match=f"_kombu.binding*.{queue}", count=1000))
    for start_at in range(0, len(keys), 500):
        client.delete(*keys[start_at : start_at + 500])
    client.close()
    with contextlib.suppress(Exception):
        asyncio.run(_cleanup_rabbitmq(cfg, queue))


async def _cleanup_rabbitmq(cfg: Config, queue: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(cfg.rabbitmq_url)
    async with connection:
        for name in (queue, f"{queue}.dead_letter", f"{queue}.poison"):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(queue)


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    cpu_rate: float  # tasks per CPU-second of the worker processes
    wall_rate: float  # tasks per second while every worker process was busy
    counted: int  # tasks inside that window
    fill_rate: float  # tasks sent per second
    latency_p50_ms: float  # sent -> started, while the queue was being filled
    latency_p99_ms: float
    idle_rss_kib: float  # mean VmRSS of a worker process, started and idle
    idle_pss_kib: float  # the same, proportional set size
    worker_cpu: float = 0.0  # CPU-seconds of the worker processes over the trial
    db_cpu: float = 0.0  # CPU-seconds of PostgreSQL over the trial (the `db` section only)

    @property
    def tasks(self) -> float:
        return self.cpu_rate * self.worker_cpu

    @property
    def total_cpu_rate(self) -> float:
        """Tasks per CPU-second of the workers and PostgreSQL together."""
        return self.tasks / max(self.worker_cpu + self.db_cpu, 1e-9)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads; 0 for gone ones)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def settle(service: Service, contender: Contender) -> tuple[list[int], list[int]]:
    """Wait until every worker process started and its RSS stopped changing for 2 s;
    return their pids and VmRSS (KiB)."""
    deadline = time.monotonic() + 90
    last: list[int] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{contender.name} worker exited:\n{service.tail()}")
        pids = children(service.process.pid)
        sizes = [rss_kib(pid) for pid in pids]
        if len(pids) != contender.processes or sorted(sizes) != last:
            last, stable_since = sorted(sizes), time.monotonic()
        elif time.monotonic() - stable_since >= 2.0:
            return pids, sizes
        time.sleep(0.25)
    raise RuntimeError(f"{contender.name}: worker processes never settled:\n{service.tail()}")


def throughput_trial(
    cfg: Config, contender: Contender, count: int, db_cpu: Callable[[], float] | None = None
) -> Outcome:
    """Start the workers, let them settle (idle RSS), send `count` tasks, wait for all.

    CPU time is what the ratios use: on a machine shared with other jobs it varies far less
    than wall time, and with 100 tasks in flight per process a worker is bound by its CPU,
    not by round trips. (The broker's own CPU is not counted.)
    """
    queue = new_queue(f"{contender.name}-{contender.broker}")
    client = redis.Redis.from_url(cfg.redis_url)
    probe_key = f"{queue}:probe"
    command, env, cwd = contender.command(queue)
    service = start(command, env, cwd, queue)
    try:
        workers, sizes = settle(service, contender)
        shares = [pss_kib(pid) for pid in workers]
        # The whole process tree: Celery's prefork parent reads the messages and hands them
        # to its children; taskiq's parent only watches its workers.
        pids = process_tree(service.process.pid)
        cpu_before = cpu_seconds(pids)
        db_before = db_cpu() if db_cpu else 0.0
        began = time.perf_counter()
        asyncio.run(contender.fill(queue, count))
        fill_rate = count / (time.perf_counter() - began)
        deadline = time.monotonic() + 60 + count / 100
        while client.llen(probe_key) < count:
            if not service.alive():
                raise RuntimeError(f"{contender.name} worker exited:\n{service.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{contender.name}: {client.llen(probe_key)} of {count} tasks ran in time:\n"
                    f"{service.tail()}"
                )
            time.sleep(0.05)
        time.sleep(0.5)  # acks, results and state writes after the last task started
        cpu = cpu_seconds(pids) - cpu_before
        db_used = db_cpu() - db_before if db_cpu else 0.0
        samples = []
        for raw in client.lrange(probe_key, 0, -1):
            pid, sent, started = raw.decode().split(":")
            samples.append((int(pid), float(sent), float(started)))
        wall_rate, counted = steady_rate(samples)
        waits = [started - sent for _pid, sent, started in samples]
        return Outcome(
            cpu_rate=count / max(cpu, 1e-9),
            wall_rate=wall_rate,
            counted=counted,
            fill_rate=fill_rate,
            latency_p50_ms=percentile(waits, 50) * 1000,
            latency_p99_ms=percentile(waits, 99) * 1000,
            idle_rss_kib=statistics.mean(sizes),
            idle_pss_kib=statistics.mean(shares),
            worker_cpu=cpu,
            db_cpu=db_used,
        )
    finally:
        service.stop()
        client.close()
        cleanup(cfg, queue)


@dataclass
class ApiOutcome:
    rps: float
    cpu_rps: float  # requests per CPU-second of the API process
    p50_ms: float
    p99_ms: float


async def load(url: str, requests: int, concurrency: int) -> ApiOutcome:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(record: bool) -> None:
            began = time.perf_counter()
            response = await client.post("/notes", json={"title": "bench", "body": ""})
            if response.status_code != 202:
                raise RuntimeError(f"POST /notes answered {response.status_code}: {response.text}")
            if record:
                latencies.append(time.perf_counter() - began)

        async def run(total: int, record: bool) -> None:
            remaining = iter(range(total))

            async def lane() -> None:
                for _ in remaining:
                    await one(record)

            await asyncio.gather(*(lane() for _ in range(concurrency)))

        await run(min(200, requests), record=False)  # warm-up: connections, caches
        began = time.perf_counter()
        await run(requests, record=True)
        elapsed = time.perf_counter() - began
    return ApiOutcome(
        requests / elapsed, 0.0, percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
    )


def api_trial(cfg: Config, broker: str, which: str, requests: int, concurrency: int) -> ApiOutcome:
    queue = new_queue(f"api-{which}-{broker}")
    port = free_port()
    uvicorn = [cfg.python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
    if which == "generated":
        env = generated_env(cfg, broker, queue)
        # Only workers record metrics in files (their main process makes the directory).
        del env["PROMETHEUS_MULTIPROC_DIR"], env["TASKIQ_METRICS_PORT"]
        command = [*uvicorn, f"{cfg.packages[broker]}.main:app"]
        cwd = cfg.projects[broker]
    else:
        env = base_env(cfg, queue)
        env.update(BENCH_BROKER=broker, BENCH_RESULT_BACKEND=cfg.result_backends[broker])
        command = [*uvicorn, "bench_bare_api:app"]
        cwd = HERE
    service = start(command, env, cwd, queue)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if not service.alive():
                raise RuntimeError(f"{which} API exited:\n{service.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{which} API never became healthy:\n{service.tail()}")
            time.sleep(0.2)
        # Warm-up inside load() is counted too: the same few requests for both.
        pids = process_tree(service.process.pid)
        cpu_before = cpu_seconds(pids)
        outcome = asyncio.run(load(url, requests, concurrency))
        cpu = cpu_seconds(pids) - cpu_before
        outcome.cpu_rps = (requests + min(200, requests)) / max(cpu, 1e-9)
        return outcome
    finally:
        service.stop()
        cleanup(cfg, queue)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Results:
    trials: dict[str, list[Outcome]] = field(default_factory=dict)
    api: dict[str, list[ApiOutcome]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def median(self, key: str, attribute: str) -> float:
        items = self.trials.get(key)
        if not items:
            return float("nan")
        return statistics.median(getattr(item, attribute) for item in items)

    def paired(self, a: str, b: str, attribute: str, api: bool = False) -> float:
        """Median over rounds of a/b, each pair measured minutes apart at most (under similar
        load); the ratio of the medians when the rounds don't pair up."""
        items = self.api if api else self.trials
        first, second = items.get(a, []), items.get(b, [])
        if first and len(first) == len(second):
            return statistics.median(
                ratio(getattr(x, attribute), getattr(y, attribute))
                for x, y in zip(first, second, strict=True)
            )
        median = self.api_median if api else self.median
        return ratio(median(a, attribute), median(b, attribute))

    def api_median(self, key: str, attribute: str) -> float:
        items = self.api.get(key)
        if not items:
            return float("nan")
        return statistics.median(getattr(item, attribute) for item in items)


def rotated(items: list[str], shift: int) -> Iterator[str]:
    """A, B, C then B, C, A ...: no contender always runs first (or right after another)."""
    shift %= len(items)
    yield from items[shift:] + items[:shift]


def run_throughput(cfg: Config, brokers: list[str], rounds: int, count: int, out: Results) -> None:
    for round_number in range(rounds):
        for broker in brokers:
            pool = contenders(cfg, broker)
            for name in rotated(list(pool), round_number):
                key = f"{name} {broker}"
                try:
                    o = throughput_trial(cfg, pool[name], count)
                except Exception as exc:  # one failed trial: report the rest
                    log(f"  round {round_number + 1}/{rounds} {key:18} FAILED: {exc}")
                    out.failed.append(key)
                    continue
                out.trials.setdefault(key, []).append(o)
                log(
                    f"  round {round_number + 1}/{rounds} {key:18} {o.cpu_rate:6.0f} tasks/CPU-s"
                    f" {o.wall_rate:6.0f} tasks/s (sent {o.fill_rate:5.0f}/s)"
                    f" latency p50 {o.latency_p50_ms:6.1f} ms p99 {o.latency_p99_ms:7.1f} ms"
                    f" idle RSS {o.idle_rss_kib / 1024:5.1f} MiB"
                )


def run_api(
    cfg: Config, brokers: list[str], rounds: int, requests: int, concurrency: int, out: Results
) -> None:
    for round_number in range(rounds):
        for broker in brokers:
            for which in rotated(["generated", "bare-fastapi"], round_number):
                key = f"{which} {broker}"
                try:
                    o = api_trial(cfg, broker, which, requests, concurrency)
                except Exception as exc:
                    log(f"  round {round_number + 1}/{rounds} api {key:22} FAILED: {exc}")
                    out.failed.append(f"api {key}")
                    continue
                out.api.setdefault(key, []).append(o)
                log(
                    f"  round {round_number + 1}/{rounds} api {key:22} {o.cpu_rps:6.0f} req/CPU-s "
                    f"{o.rps:6.0f} req/s "
                    f"p50 {o.p50_ms:6.1f} ms p99 {o.p99_ms:6.1f} ms"
                )


def run_db(cfg: Config, brokers: list[str], rounds: int, count: int, out: Results) -> None:
    def db_cpu() -> float:
        return postgres_cpu_seconds(cfg.postgres_data)

    for round_number in range(rounds):
        for broker in brokers:
            pool = db_contenders(cfg, broker)
            for name in rotated(list(pool), round_number):
                key = f"{name} {broker}"
                try:
                    o = throughput_trial(cfg, pool[name], count, db_cpu)
                except Exception as exc:
                    log(f"  round {round_number + 1}/{rounds} {key:26} FAILED: {exc}")
                    out.failed.append(key)
                    continue
                out.trials.setdefault(key, []).append(o)
                log(
                    f"  round {round_number + 1}/{rounds} {key:26} {o.total_cpu_rate:6.0f} "
                    f"tasks/CPU-s (workers {o.worker_cpu:5.1f} s + PostgreSQL {o.db_cpu:5.1f} s"
                    f" of CPU) {o.wall_rate:6.0f} tasks/s"
                )


def report_db(out: Results, brokers: list[str]) -> None:
    for key in sorted(k for k in out.trials if k.startswith("db-")):
        items = out.trials[key]
        worker = statistics.median(o.worker_cpu / o.tasks * 1e6 for o in items)
        db = statistics.median(o.db_cpu / o.tasks * 1e6 for o in items)
        print(
            f"db {key}: {out.median(key, 'total_cpu_rate'):.0f} tasks/CPU-s of workers and"
            f" PostgreSQL (CPU per task: workers {worker:.0f} us, PostgreSQL {db:.0f} us);"
            f" {out.median(key, 'wall_rate'):.0f} tasks/s wall"
        )
    for broker in brokers:
        generated, bare = f"db-generated {broker}", f"db-taskiq-pooled {broker}"
        nullpool = f"db-nullpool {broker}"
        if generated in out.trials and bare in out.trials:
            value = out.paired(generated, bare, "total_cpu_rate")
            print(f"ratio db generated/taskiq-pooled {broker}: {value:.2f}")
        if generated in out.trials and nullpool in out.trials:
            value = out.paired(generated, nullpool, "total_cpu_rate")
            print(f"ratio db pooled/nullpool {broker}: {value:.2f}")
            wall = out.paired(generated, nullpool, "wall_rate")
            print(f"ratio db-wall pooled/nullpool {broker}: {wall:.2f}")


COST_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "as generated": ("", {}),
    "without metrics": ("", {"TASKIQ_METRICS_PORT": "0"}),
    "without INFO logs": ("", {"LOG_LEVEL": "WARNING"}),
    "without task states": ("TaskStateMiddleware", {}),
    "without retries": ("RetryMiddleware", {}),
    "without log context": ("TaskLogContextMiddleware", {}),
    "without all of these": (
        "TaskStateMiddleware,RetryMiddleware,TaskLogContextMiddleware",
        {"TASKIQ_METRICS_PORT": "0", "LOG_LEVEL": "WARNING"},
    ),
}


def run_costs(cfg: Config, broker: str, rounds: int, count: int) -> None:
    """The generated worker with one feature left out at a time (and with all left out)."""
    rates: dict[str, list[float]] = {}
    for round_number in range(rounds):
        for name in rotated(list(COST_VARIANTS), round_number):
            without, extra = COST_VARIANTS[name]
            contender = contenders(cfg, broker, without)["generated"]
            command = contender.command

            def with_extra(
                queue: str,
                command: Callable[[str], tuple[list[str], dict[str, str], Path]] = command,
                extra: dict[str, str] = extra,
            ) -> tuple[list[str], dict[str, str], Path]:
                argv, env, cwd = command(queue)
                return argv, {**env, **extra}, cwd

            contender.command = with_extra
            o = throughput_trial(cfg, contender, count)
            rates.setdefault(name, []).append(o.cpu_rate)
            log(f"  round {round_number + 1}/{rounds} {name:22} {o.cpu_rate:6.0f} tasks/CPU-s")
    base = statistics.median(rates["as generated"])
    for name, values in rates.items():
        median = statistics.median(values)
        us = 1e6 / median - 1e6 / base
        print(
            f"cost {broker} {name}: {median:.0f} tasks/CPU-s ({ratio(median, base):.2f}x; "
            f"{1e6 / median:.0f} us of CPU per task, {us:+.0f} us)"
        )


def report(out: Results, brokers: list[str]) -> None:
    for key in out.failed:
        print(f"failed trial: {key}")
    for key in sorted(k for k in out.trials if not k.startswith("db-")):
        values = ", ".join(f"{o.cpu_rate:.0f}" for o in out.trials[key])
        print(
            f"throughput {key}: {out.median(key, 'cpu_rate'):.0f} tasks/CPU-s ({values}); "
            f"{out.median(key, 'wall_rate'):.0f} tasks/s wall; "
            f"sent {out.median(key, 'fill_rate'):.0f}/s; "
            f"latency p50 {out.median(key, 'latency_p50_ms'):.1f} ms "
            f"p99 {out.median(key, 'latency_p99_ms'):.1f} ms; "
            f"idle RSS {out.median(key, 'idle_rss_kib') / 1024:.1f} MiB per process "
            f"(PSS {out.median(key, 'idle_pss_kib') / 1024:.1f} MiB)"
        )
    for key in sorted(out.api):
        print(
            f"api {key}: {out.api_median(key, 'cpu_rps'):.0f} req/CPU-s, "
            f"{out.api_median(key, 'rps'):.0f} req/s, "
            f"p50 {out.api_median(key, 'p50_ms'):.1f} ms, p99 {out.api_median(key, 'p99_ms'):.1f} ms"
        )
    for broker in brokers:
        generated = f"generated {broker}"
        present = [
            o for o in ("taskiq", "taskiq-db", "celery", "raw") if f"{o} {broker}" in out.trials
        ]
        if generated not in out.trials:
            present = []
        for other in present:
            value = out.paired(generated, f"{other} {broker}", "cpu_rate")
            print(f"ratio generated/{other} {broker}: {value:.2f}")
        for other in present:
            value = out.paired(generated, f"{other} {broker}", "wall_rate")
            print(f"ratio wall generated/{other} {broker}: {value:.2f}")
        if "taskiq" in present:
            value = out.paired(generated, f"taskiq {broker}", "fill_rate")
            print(f"ratio enqueue generated/taskiq {broker}: {value:.2f}")
        for other in (o for o in present if o != "raw"):
            value = out.paired(generated, f"{other} {broker}", "idle_rss_kib")
            print(f"ratio rss generated/{other} {broker}: {value:.2f}")
            value = out.paired(generated, f"{other} {broker}", "idle_pss_kib")
            print(f"ratio pss generated/{other} {broker}: {value:.2f}")
        gen, bare = f"generated {broker}", f"bare-fastapi {broker}"
        if gen in out.api and bare in out.api:
            cpu = out.paired(gen, bare, "cpu_rps", api=True)
            print(f"ratio api/bare-fastapi {broker}: {cpu:.2f}")
            print(
                f"ratio api-wall/bare-fastapi {broker}: {out.paired(gen, bare, 'rps', api=True):.2f}"
            )
            p50 = out.paired(gen, bare, "p50_ms", api=True)
            p99 = out.paired(gen, bare, "p99_ms", api=True)
            print(f"ratio api-p50 generated/bare-fastapi {broker}: {p50:.2f}")
            print(f"ratio api-p99 generated/bare-fastapi {broker}: {p99:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True, help="JSON written by run.py")
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--sections", default="throughput,api")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--api-requests", type=int, default=2000)
    parser.add_argument("--api-concurrency", type=int, default=20)
    args = parser.parse_args()
    raw = json.loads(Path(args.config).read_text())
    cfg = Config(
        **{
            **raw,
            "projects": {k: Path(v) for k, v in raw["projects"].items()},
        }
    )
    os.environ.update(BENCH_REDIS_URL=cfg.redis_url, BENCH_RABBITMQ_URL=cfg.rabbitmq_url)
    global LOG_DIR
    LOG_DIR = Path(args.config).resolve().parent / "logs"
    LOG_DIR.mkdir(exist_ok=True)
    brokers = [b for b in args.brokers.split(",") if b]
    sections = set(args.sections.split(","))
    out = Results()
    if "throughput" in sections:
        log(f"throughput: {args.tasks} no-op tasks per trial, {args.rounds} rounds")
        run_throughput(cfg, brokers, args.rounds, args.tasks, out)
    if "api" in sections:
        log(f"API: {args.api_requests} POST /notes, {args.api_concurrency} at a time")
        run_api(cfg, brokers, args.rounds, args.api_requests, args.api_concurrency, out)
    if "db" in sections:
        log(f"db: {args.tasks} row-writing tasks per trial, {args.rounds} rounds")
        run_db(cfg, brokers, args.rounds, args.tasks, out)
    report(out, brokers)
    report_db(out, brokers)
    if "costs" in sections:
        for broker in brokers:
            log(f"feature costs on {broker}")
            run_costs(cfg, broker, args.rounds, args.tasks)
    if out.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
