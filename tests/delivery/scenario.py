"""Delivery scenarios: a generated project's real API, workers and brokers, killed and restarted.

Run by tests/test_delivery.py with the generated project's interpreter (it needs the project's
dependencies: httpx, asyncpg, redis, aio-pika), from the project directory:

    python scenario.py --package PKG --broker redis|rabbitmq --workdir DIR
        [--cases worker_crash,delays,...] [--serial]

Every case runs on a queue of its own against private broker instances (services.py) and a
PostgreSQL database of its own, and leaves its figures in DIR/results.json; process logs are
kept in DIR. The pytest side asserts on the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from services import (  # noqa: E402
    PrivatePostgres,
    PrivateRabbitMQ,
    PrivateRedis,
    free_port,
)

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DUPLICATE_LOG = "Duplicate delivery of task"
RESTARTED_LOG = "is dead. Scheduling reload"
# Processes start slowly on a loaded 2-core machine: generous, but bounded.
START_WITHIN = 90.0


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A process of the scenario, in a session (process group) of its own, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, command: list[str], env: dict[str, str], log: Path) -> Proc:
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, process, log)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    async def wait_log(self, needle: str, times: int = 1, within: float = START_WITHIN) -> None:
        """Wait for `needle` in the log; a worker process that died on the way fails at once."""
        deadline = time.monotonic() + within
        while self.count(needle) < times:
            problem = None
            if not self.alive:
                problem = f"exited ({self.process.returncode})"
            elif RESTARTED_LOG in self.text():
                problem = "lost a worker process"
            elif time.monotonic() > deadline:
                problem = f"timed out after {within} s"
            if problem:
                tail = self.text()[-4000:]
                raise RuntimeError(f"{self.name} {problem} waiting for {needle!r}:\n{tail}")
            await asyncio.sleep(0.1)

    def kill_group(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole process group: a crash takes the worker's children down too."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    async def wait_exit(self, within: float) -> int | None:
        deadline = time.monotonic() + within
        while self.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.process.poll()

    async def stop(self) -> None:
        if self.alive:
            self.kill_group(signal.SIGTERM)
            if await self.wait_exit(20) is None:
                self.kill_group(signal.SIGKILL)
                await self.wait_exit(10)
        else:
            self.kill_group(signal.SIGKILL)  # children that outlived their parent


# ---------------------------------------------------------------------------------------------
# The run: project, services, database
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    package: str
    broker: str
    workdir: Path
    redis: PrivateRedis
    rabbitmq: PrivateRabbitMQ | None
    database_url: str = ""
    processes: list[Proc] = field(default_factory=list)
    # Services a case starts for itself (a private PostgreSQL), removed when the case ends.
    extra_services: list[PrivatePostgres] = field(default_factory=list)
    # What happened when in the current case, for the report: "12.3s a-worker-1 up".
    events: list[str] = field(default_factory=list)
    case_started: float = field(default_factory=time.monotonic)

    def note(self, event: str) -> None:
        self.events.append(f"{time.monotonic() - self.case_started:.1f}s {event}")

    @property
    def project(self) -> Path:
        return Path.cwd()

    def record_services(self) -> None:
        services = [self.redis.describe()]
        if self.rabbitmq is not None:
            services.append(self.rabbitmq.describe())
        services.extend(service.describe() for service in self.extra_services)
        (self.workdir / "services.json").write_text(json.dumps(services))

    def env(self, queue: str, **overrides: str) -> dict[str, str]:
        """Environment of this case's API and worker processes."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TASKIQ_", "PYTEST", "COPIER_")) and key != "VIRTUAL_ENV"
        }
        env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(self.project / "src"), str(HERE)]),
                "PYTHONUNBUFFERED": "1",
                "DELIVERY_PACKAGE": self.package,
                "DELIVERY_MARKERS": str(self.workdir / "markers"),
                "DATABASE_URL": self.database_url,
                "LOG_LEVEL": "INFO",
                "TASKIQ_ENABLED": "true",
                "TASKIQ_QUEUE_NAME": queue,
                "TASKIQ_METRICS_PORT": "0",
                "TASKIQ_REDIS_HOST": "127.0.0.1",
                "TASKIQ_REDIS_PORT": str(self.redis.port),
                "TASKIQ_REDIS_DB": "0",
                "TASKIQ_REDIS_PASSWORD": "",
                # Task and idle timeouts are the shipped ones (a case that shortens one says
                # why): recovery from a crash is measured as a new project has it.
            }
        )
        if self.rabbitmq is not None:
            env.update(
                {
                    "TASKIQ_RABBITMQ_HOST": "127.0.0.1",
                    "TASKIQ_RABBITMQ_PORT": str(self.rabbitmq.port),
                    "TASKIQ_RABBITMQ_USER": "guest",
                    "TASKIQ_RABBITMQ_PASSWORD": "guest",
                    "TASKIQ_RABBITMQ_VHOST": "/",
                }
            )
        env.update(overrides)
        return env

    def settings(self, env: dict[str, str]) -> Any:
        """The project's Settings for `env` (explicit values: this process's env must not leak)."""
        module = importlib.import_module(f"{self.package}.infrastructure.config.settings")
        fields = module.Settings.model_fields
        values = {
            name.lower(): value
            for name, value in env.items()
            if name.lower() in fields and (name.startswith("TASKIQ_") or name == "DATABASE_URL")
        }
        return module.Settings(**values)

    @contextlib.asynccontextmanager
    async def client_broker(self, env: dict[str, str]) -> AsyncIterator[Any]:
        brokers = importlib.import_module(f"{self.package}.infrastructure.taskiq.brokers")
        broker = brokers.build_broker(self.settings(env))
        await broker.startup()
        try:
            yield broker
        finally:
            await broker.shutdown()

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Proc:
        proc = Proc.start(name, command, env, self.workdir / f"{name}.log")
        self.processes.append(proc)
        # Each process leads a process group of its own: the pytest side kills what is left
        # if this scenario is killed (services.clean_up_leftovers).
        with (self.workdir / "process-groups").open("a") as groups:
            groups.write(f"{proc.process.pid}\n")
        return proc

    async def start_worker(
        self, name: str, env: dict[str, str], workers: int = 1, *extra: str
    ) -> Proc:
        command = [
            sys.executable, "-m", "taskiq", "worker",
            f"{self.package}.worker:default_broker", "delivery_tasks",
            "--workers", str(workers), *extra,
        ]  # fmt: skip
        proc = self.start(name, command, env)
        await proc.wait_log("Listening started", times=workers)
        self.note(f"{name} up")
        return proc

    async def start_entry_point_worker(self, name: str, env: dict[str, str], *argv: str) -> Proc:
        """`python -m <pkg>.worker` (its flags come from settings)."""
        module = f"{self.package}.worker"
        proc = self.start(name, [sys.executable, "-m", module, "delivery_tasks", *argv], env)
        await proc.wait_log("Listening started")
        self.note(f"{name} up")
        return proc

    async def start_api(self, name: str, env: dict[str, str]) -> tuple[Proc, str]:
        port = free_port()
        command = [
            sys.executable, "-m", "uvicorn", f"{self.package}.main:app",
            "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
        ]  # fmt: skip
        proc = self.start(name, command, env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_WITHIN
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                if not proc.alive:
                    raise RuntimeError(f"{name} exited:\n{proc.text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{url}/health")).status_code == 200:
                        self.note(f"{name} up")
                        return proc, url
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not healthy within {START_WITHIN} s")
                await asyncio.sleep(0.2)

    async def stop_all(self) -> None:
        await asyncio.gather(*(proc.stop() for proc in self.processes))
        self.processes.clear()


def admin_dsn() -> str:
    return os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL).replace("+asyncpg", "")


async def create_database(run: Run, postgres: PrivatePostgres | None = None) -> None:
    """A database of the run's own (on the shared server, or on `postgres`), migrated."""
    name = f"delivery_{run.broker}_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(postgres.admin_dsn if postgres else admin_dsn())
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    if postgres is not None:
        run.database_url = postgres.url(name)
    else:
        admin = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        run.database_url = admin.rsplit("/", 1)[0] + f"/{name}"
    env = run.env("migrations")
    migrate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alembic", "upgrade", "heads",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await migrate.communicate()
    if migrate.returncode != 0:
        raise RuntimeError(f"alembic upgrade heads failed:\n{output.decode()}")


async def drop_database(run: Run) -> None:
    if not run.database_url:
        return
    name = urlsplit(run.database_url).path.lstrip("/")
    connection = await asyncpg.connect(admin_dsn())
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def db(run: Run) -> asyncpg.Connection:
    return await asyncpg.connect(run.database_url.replace("+asyncpg", ""))


async def rows_for(run: Run, task_ids: list[str]) -> set[str]:
    connection = await db(run)
    try:
        records = await connection.fetch(
            "SELECT task_id FROM notes WHERE task_id = ANY($1::text[])", task_ids
        )
    finally:
        await connection.close()
    return {record["task_id"] for record in records}


async def rows_titled(run: Run, prefix: str) -> list[asyncpg.Record]:
    connection = await db(run)
    try:
        return await connection.fetch(
            "SELECT task_id, title, created_at FROM notes WHERE title LIKE $1", f"{prefix}%"
        )
    finally:
        await connection.close()


async def wait_rows(run: Run, task_ids: list[str], within: float) -> set[str]:
    deadline = time.monotonic() + within
    while True:
        done = await rows_for(run, task_ids)
        if len(done) == len(task_ids) or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.2)


def duplicates(procs: list[Proc]) -> int:
    return sum(proc.count(DUPLICATE_LOG) for proc in procs)


async def figures(
    run: Run, sent: list[str], procs: list[Proc], within: float, **extra: Any
) -> dict[str, Any]:
    """Wait up to `within` s for every sent task's note, then count.

    completed: sent tasks whose note exists; lost: sent tasks without one; rows_over_one: task
    ids with more than one note (the unique index makes it 0, the test checks anyway);
    duplicates_suppressed: deliveries that found their note written (the service logs each).
    """
    done = await wait_rows(run, sent, within)
    connection = await db(run)
    try:
        over_one = await connection.fetchval(
            "SELECT count(*) FROM (SELECT task_id FROM notes WHERE task_id = ANY($1::text[])"
            " GROUP BY task_id HAVING count(*) > 1) AS repeated",
            sent,
        )
    finally:
        await connection.close()
    return {
        "sent": len(sent),
        "completed": len(done & set(sent)),
        "duplicates_suppressed": duplicates(procs),
        "lost": len(set(sent) - done),
        "rows_over_one": over_one,
        **extra,
    }


def queue_name(case: str) -> str:
    return f"delivery-{case}-{uuid.uuid4().hex[:8]}"


def markers(run: Run, case: str) -> Path:
    path = run.workdir / f"markers-{case}"
    path.mkdir(exist_ok=True)
    return path


async def wait_marker(directory: Path, kind: str, task_id: str, within: float) -> Path:
    deadline = time.monotonic() + within
    while not (found := list(directory.glob(f"{kind}-{task_id}-*"))):
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} never {kind} within {within} s")
        await asyncio.sleep(0.05)
    return found[0]


# ---------------------------------------------------------------------------------------------
# Sending through the API
# ---------------------------------------------------------------------------------------------


@dataclass
class Sender:
    """POSTs `total` notes; a 503 or a dropped connection (broker down) is retried."""

    url: str
    total: int
    prefix: str
    accepted: list[str] = field(default_factory=list)
    retries: int = 0

    async def run(self, concurrency: int = 32, give_up_after: float = 120) -> None:
        numbers = iter(range(self.total))
        deadline = time.monotonic() + give_up_after
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:

            async def one_sender() -> None:
                for number in numbers:
                    while True:
                        try:
                            response = await client.post(
                                "/notes", json={"title": f"{self.prefix}{number}", "body": ""}
                            )
                        except httpx.TransportError:
                            response = None
                        if response is not None and response.status_code == 202:
                            self.accepted.append(response.json()["task_id"])
                            break
                        if response is not None and response.status_code != 503:
                            status, text = response.status_code, response.text
                            raise RuntimeError(f"POST /notes: {status} {text}")
                        if time.monotonic() > deadline:
                            raise RuntimeError("the API refused notes for too long")
                        self.retries += 1
                        await asyncio.sleep(0.2)

            await asyncio.gather(*(one_sender() for _ in range(concurrency)))


async def when_progress(run: Run, prefix: str, count: int, within: float = 120) -> int:
    """Wait until `count` notes titled `prefix...` exist; return how many there are."""
    deadline = time.monotonic() + within
    connection = await db(run)
    try:
        while True:
            done: int = await connection.fetchval(
                "SELECT count(*) FROM notes WHERE title LIKE $1", f"{prefix}%"
            )
            if done >= count or time.monotonic() > deadline:
                return done
            await asyncio.sleep(0.05)
    finally:
        await connection.close()


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

BATCH = 1000


async def case_worker_crash(run: Run) -> dict[str, Any]:
    """(a) 1,000 notes through the API; the worker is SIGKILLed mid-batch, then restarted."""
    env = run.env(queue_name("a"))
    _, url = await run.start_api("a-api", env)
    first = await run.start_worker("a-worker-1", env, 2)
    sender = Sender(url, BATCH, "a-")
    sending = asyncio.create_task(sender.run())
    done_at_kill = await when_progress(run, "a-", BATCH // 4)
    first.kill_group(signal.SIGKILL)
    run.note(f"a-worker-1 killed ({done_at_kill} done)")
    accepted_at_kill = len(sender.accepted)
    await first.wait_exit(10)
    pending_at_kill = await unacknowledged(run, env)
    held = await held_by_consumers(run, env)
    second = await run.start_worker("a-worker-2", env, 2)
    recovery = asyncio.create_task(recovered_after(run, env, held))
    await sending
    run.note("all sent")
    recovered_seconds = await recovery
    run.note(f"the killed worker's tasks done ({recovered_seconds} s after a-worker-2 was up)")
    return await figures(
        run,
        sender.accepted,
        [first, second],
        120,
        completed_at_kill=done_at_kill,
        accepted_at_kill=accepted_at_kill,
        unacknowledged_at_kill=pending_at_kill,
        # Redis: seconds from the new worker's start until every task the killed worker held
        # has its note and nothing is pending for the dead consumers (None on RabbitMQ).
        held_recovered_seconds=recovered_seconds,
        api_retries=sender.retries,
    )


async def case_broker_restart(run: Run) -> dict[str, Any]:
    """(b) The same batch, with the broker restarted mid-batch."""
    env = run.env(queue_name("b"))
    _, url = await run.start_api("b-api", env)
    worker = await run.start_worker("b-worker", env, 2)
    sender = Sender(url, BATCH, "b-")
    sending = asyncio.create_task(sender.run())
    done_at_restart = await when_progress(run, "b-", BATCH // 4)
    started = time.monotonic()
    service = run.rabbitmq if run.broker == "rabbitmq" else run.redis
    assert service is not None
    run.note(f"restarting the broker ({done_at_restart} done)")
    await asyncio.to_thread(service.restart)
    run.record_services()
    run.note("broker back")
    restart_seconds = time.monotonic() - started
    await sending
    run.note("all sent")
    return await figures(
        run,
        sender.accepted,
        [worker],
        150,
        completed_at_restart=done_at_restart,
        broker_restart_seconds=round(restart_seconds, 1),
        api_retries=sender.retries,
        worker_alive=worker.alive,
        worker_child_restarts=worker.count(RESTARTED_LOG),
    )


async def case_postgres_restart(run: Run) -> dict[str, Any]:
    """(j) PostgreSQL restarted (fast shutdown: every session ended) mid-batch of row-writing
    tasks, on a private cluster. Tasks that ran into the outage are retried; once the server is
    back, no task fails on a pooled connection that the restart broke."""
    postgres = PrivatePostgres()
    run.extra_services.append(postgres)
    run.record_services()
    await asyncio.to_thread(postgres.start)
    await create_database(run, postgres)
    marks = markers(run, "j")
    env = run.env(queue_name("j"), DELIVERY_MARKERS=str(marks))
    # Queued before the workers start: the API and the senders are not what is tested here.
    async with run.client_broker(env) as broker:
        # By name, so with the labels registration gives: retries on any error.
        write = kicker(
            broker, "delivery:write", env, retry_on_error=True, retry_on="builtins.Exception"
        )
        sent = [(await write.kiq(f"j-{number}")).task_id for number in range(BATCH)]
    worker = await run.start_worker("j-worker", env, 2)
    done_at_restart = await when_progress(run, "j-", BATCH // 4)
    run.note(f"restarting PostgreSQL ({done_at_restart} done)")
    started = time.monotonic()
    await asyncio.to_thread(postgres.restart)
    back_at = time.time()
    run.note("PostgreSQL back")
    restart_seconds = time.monotonic() - started
    result = await figures(
        run,
        sent,
        [worker],
        150,
        completed_at_restart=done_at_restart,
        postgres_restart_seconds=round(restart_seconds, 1),
        worker_alive=worker.alive,
        worker_child_restarts=worker.count(RESTARTED_LOG),
    )
    failures = sorted(
        (float(path.name.rsplit("-", 1)[1]), path.read_text()) for path in marks.glob("failed-*")
    )
    # Attempts that started once the server accepted connections again and failed: on a
    # pooled connection that the restart broke (an attempt started during the outage may
    # fail a little after it, under load, with the outage's errors).
    after = [error for at, error in failures if at > back_at]
    result.update(
        failures_during_outage=len(failures) - len(after),
        failures_after_restart=len(after),
        errors_after_restart=sorted(set(after))[:5],
    )
    # Then a restart while the workers are idle, their pools full of connections that it
    # breaks (the mid-batch outage above already makes SQLAlchemy drop a whole pool: only
    # here would a pooled connection reach a task unchecked), and more tasks.
    run.note("restarting PostgreSQL under idle workers")
    await asyncio.to_thread(postgres.restart)
    async with run.client_broker(env) as broker:
        write = kicker(
            broker, "delivery:write", env, retry_on_error=True, retry_on="builtins.Exception"
        )
        idle_sent = [(await write.kiq(f"j-idle-{number}")).task_id for number in range(200)]
    idle = await figures(run, idle_sent, [worker], 120)
    idle_failed = [path.read_text() for path in marks.glob("failed-*") if any(
        path.name.startswith(f"failed-{task_id}-") for task_id in idle_sent)]  # fmt: skip
    result.update(
        idle_restart_sent=idle["sent"],
        idle_restart_lost=idle["lost"],
        idle_restart_failures=len(idle_failed),
        idle_restart_errors=sorted(set(idle_failed))[:5],
    )
    return result


async def case_idle_queue_crash(run: Run) -> dict[str, Any]:
    """(c) A worker dies holding a task and nothing else is sent: another worker finishes it."""
    marks = markers(run, "c")
    env = run.env(queue_name("c"), DELIVERY_MARKERS=str(marks))
    first = await run.start_worker("c-worker-1", env)
    async with run.client_broker(env) as broker:
        task = await kicker(broker, "delivery:sleep", env).kiq(2.0, "c-held")
    await wait_marker(marks, "started", task.task_id, within=30)
    first.kill_group(signal.SIGKILL)
    await first.wait_exit(10)
    killed_at = time.monotonic()
    second = await run.start_worker("c-worker-2", env)
    second_up = time.monotonic()
    await wait_rows(run, [task.task_id], within=60)
    finished = list(marks.glob(f"finished-{task.task_id}-*"))
    return await figures(
        run,
        [task.task_id],
        [first, second],
        0,
        finished_by_second_worker=second.count(f"ID: {task.task_id}") > 0 and len(finished) == 1,
        finished_seconds_after_kill=round(time.monotonic() - killed_at, 1),
        finished_seconds_after_second_worker=round(time.monotonic() - second_up, 1),
    )


# The blocking case's idle timeout: 3 s, not the shipped 15 s. What it tests is a lease held
# for many idle timeouts while the event loop is blocked; a shorter one is the harder case
# (renewals 1 s apart) and keeps the case at 30 s instead of 150 s.
BLOCKING_IDLE_TIMEOUT = 3.0
BLOCKING_SECONDS = 10 * BLOCKING_IDLE_TIMEOUT


async def case_blocking_task(run: Run) -> dict[str, Any]:
    """(g) A task blocks its event loop for 10 idle timeouts while a second worker process
    polls for idle entries the whole time: it runs once, and is never reclaimed."""
    marks = markers(run, "g")
    env = run.env(
        queue_name("g"),
        DELIVERY_MARKERS=str(marks),
        TASKIQ_REDIS_IDLE_TIMEOUT_SECONDS=str(BLOCKING_IDLE_TIMEOUT),
    )
    # Two worker processes: one runs the task, the other reclaims (XAUTOCLAIM) every second.
    workers = await run.start_worker("g-worker", env, 2)
    async with run.client_broker(env) as broker:
        task = await kicker(broker, "delivery:block", env).kiq(BLOCKING_SECONDS, "g-blocking")
    await wait_marker(marks, "started", task.task_id, within=30)
    run.note("blocking task started")
    await wait_rows(run, [task.task_id], within=BLOCKING_SECONDS + 60)
    run.note("blocking task done")
    # A reclaim would start it again elsewhere: give a late one time to show.
    await asyncio.sleep(2 * BLOCKING_IDLE_TIMEOUT)
    return await figures(
        run,
        [task.task_id],
        [workers],
        0,
        blocked_seconds=BLOCKING_SECONDS,
        idle_timeout_seconds=BLOCKING_IDLE_TIMEOUT,
        starts=len(list(marks.glob(f"started-{task.task_id}-*"))),
        finishes=len(list(marks.glob(f"finished-{task.task_id}-*"))),
        reclaim_logs=workers.count("Reclaimed"),
        worker_child_restarts=workers.count(RESTARTED_LOG),
    )


DELAYS = (3.0, 1.0, 2.0, 0.5, 2.5, 1.5)


async def case_delays(run: Run) -> dict[str, Any]:
    """(d) Delayed tasks, sent longest first, each run within a second of its delay."""
    env = run.env(queue_name("d"))
    worker = await run.start_worker("d-worker", env)
    sent: dict[str, tuple[float, float]] = {}
    async with run.client_broker(env) as broker:
        for delay in DELAYS:
            sent_at = time.time()
            task = await kicker(broker, "notes:create", env, delay=delay).kiq(f"d-{delay}", "")
            sent[task.task_id] = (delay, sent_at)
    await wait_rows(run, list(sent), within=30)
    lateness: dict[str, float] = {}
    for record in await rows_titled(run, "d-"):
        delay, sent_at = sent[record["task_id"]]
        lateness[str(delay)] = round(record["created_at"].timestamp() - sent_at - delay, 3)
    return await figures(run, list(sent), [worker], 0, lateness_seconds=lateness)


async def case_sigterm(run: Run) -> dict[str, Any]:
    """(e) SIGTERM during a running task: it finishes and the worker exits within the timeout;
    tasks it had fetched but not started stay on the broker for the next worker."""
    marks = markers(run, "e")
    queue = queue_name("e")
    base = {
        "DELIVERY_MARKERS": str(marks),
        "TASKIQ_WORKER_CONCURRENCY": "1",
        # Reads (Redis) or prefetches (RabbitMQ) 4 messages, runs 1 at a time (see below).
        "TASKIQ_MAX_TASKS_PER_WORKER": "4",
    }
    result: dict[str, Any] = {}
    procs: list[Proc] = []
    ids: list[str] = []

    # 1: the running task fits in the timeout: it finishes; the 3 fetched ones stay queued.
    # Sent before the worker starts, so its first read (or prefetch) takes all 4 at once.
    timeout = 8.0
    env = run.env(queue, TASKIQ_SHUTDOWN_TIMEOUT_SECONDS=str(timeout), **base)
    async with run.client_broker(env) as broker:
        running = await kicker(broker, "delivery:sleep", env).kiq(2.0, "e-running")
        waiting = [
            (await kicker(broker, "notes:create", env).kiq(f"e-waiting-{n}", "")).task_id
            for n in range(3)
        ]
    ids += [running.task_id, *waiting]
    worker = await run.start_entry_point_worker("e-worker-1", env, "--max-async-tasks", "1")
    procs.append(worker)
    await wait_marker(marks, "started", running.task_id, within=30)
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = await worker.wait_exit(timeout + 30)
    result["finish_exit_seconds"] = round(time.monotonic() - signalled, 2)
    result["finish_exit_code"] = code
    result["shutdown_timeout_seconds"] = timeout
    result["running_task_finished"] = bool(await rows_for(run, [running.task_id]))
    result["waiting_run_before_exit"] = len(await rows_for(run, waiting))
    result["handed_back_log"] = worker.count("Put 3 message(s) not started here back")

    # 2: the running task outlasts the timeout: the worker exits anyway; the task runs again.
    short = 1.5
    env = run.env(queue, TASKIQ_SHUTDOWN_TIMEOUT_SECONDS=str(short), **base)
    worker = await run.start_entry_point_worker("e-worker-2", env, "--max-async-tasks", "1")
    procs.append(worker)
    started = time.monotonic()
    result["waiting_run_by_next_worker"] = len(await wait_rows(run, waiting, within=30))
    result["waiting_run_seconds_after_start"] = round(time.monotonic() - started, 2)
    async with run.client_broker(env) as broker:
        long_task = await kicker(broker, "delivery:sleep", env).kiq(4.0, "e-long")
    ids.append(long_task.task_id)
    await wait_marker(marks, "started", long_task.task_id, within=30)
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = await worker.wait_exit(short + 30)
    result["cut_exit_seconds"] = round(time.monotonic() - signalled, 2)
    result["cut_exit_code"] = code
    result["cut_shutdown_timeout_seconds"] = short
    result["long_task_done_before_exit"] = bool(await rows_for(run, [long_task.task_id]))
    result["unfinished_handed_back_log"] = worker.count("Put 1 unfinished message(s) back")
    last = await run.start_worker("e-worker-3", env)
    procs.append(last)
    return await figures(run, ids, procs, 60, **result)


async def case_poison(run: Run) -> dict[str, Any]:
    """(f) Poison messages on the queue: set aside where visible; what follows still runs."""
    queue = queue_name("f")
    env = run.env(queue)
    worker = await run.start_worker("f-worker", env)
    poison = await inject_poison(run, env, queue)
    async with run.client_broker(env) as broker:
        ids = [
            (await kicker(broker, "notes:create", env).kiq(f"f-{n}", "")).task_id for n in range(20)
        ]
    await wait_rows(run, ids, within=60)
    parked = await read_parked(run, env, queue)
    return await figures(
        run,
        ids,
        [worker],
        0,
        poison_sent=poison,
        poison_parked=parked,
        worker_alive=worker.alive,
        worker_child_restarts=worker.count(RESTARTED_LOG),
    )


# ---------------------------------------------------------------------------------------------
# Broker-specific probes
# ---------------------------------------------------------------------------------------------


def kicker(broker: Any, task_name: str, env: dict[str, str], **labels: Any) -> Any:
    """Kick by name (the test tasks live in the worker only), with the task timeout the
    project's registered tasks get: the case's, or the shipped default."""
    from taskiq.kicker import AsyncKicker

    timeout = env.get("TASKIQ_TASK_TIMEOUT_SECONDS")
    if timeout is None:
        settings = importlib.import_module(f"{env['DELIVERY_PACKAGE']}.infrastructure.config")
        timeout = settings.Settings.model_fields["taskiq_task_timeout_seconds"].default
    labels.setdefault("timeout", float(timeout))
    return AsyncKicker(task_name=task_name, broker=broker, labels=labels)


UNKNOWN_TASK = {"task_id": "poison-unknown", "task_name": "nobody:knows", "labels": {},
                "args": [], "kwargs": {}}  # fmt: skip


async def unacknowledged(run: Run, env: dict[str, str]) -> int | None:
    """Messages delivered but not acknowledged (Redis: the group's PEL); None on RabbitMQ."""
    if run.broker != "redis":
        return None
    from redis.asyncio import Redis

    async with Redis(port=run.redis.port) as redis:
        summary = await redis.xpending(env["TASKIQ_QUEUE_NAME"], env["TASKIQ_QUEUE_NAME"])
        return int(summary["pending"])


async def held_by_consumers(run: Run, env: dict[str, str]) -> dict[str, list[str]]:
    """Redis: the task ids each consumer (here: the killed worker's) holds; {} on RabbitMQ."""
    if run.broker != "redis":
        return {}
    from redis.asyncio import Redis

    queue = env["TASKIQ_QUEUE_NAME"]
    held: dict[str, list[str]] = {}
    async with Redis(port=run.redis.port) as redis:
        for entry in await redis.xpending_range(queue, queue, "-", "+", 100_000):
            for _, fields in await redis.xrange(queue, entry["message_id"], entry["message_id"]):
                task_id = json.loads(fields[b"data"])["task_id"]
                held.setdefault(entry["consumer"].decode(), []).append(task_id)
    return held


async def recovered_after(
    run: Run, env: dict[str, str], held: dict[str, list[str]]
) -> float | None:
    """Seconds until the held tasks have their notes and the dead consumers hold nothing."""
    if run.broker != "redis":
        return None
    from redis.asyncio import Redis

    queue = env["TASKIQ_QUEUE_NAME"]
    task_ids = [task_id for ids in held.values() for task_id in ids]
    started = time.monotonic()
    async with Redis(port=run.redis.port) as redis:
        while time.monotonic() - started < 120:
            summary = await redis.xpending(queue, queue)
            still_held = sum(
                int(consumer["pending"])
                for consumer in summary["consumers"]
                if consumer["name"].decode() in held
            )
            if not still_held and len(await rows_for(run, task_ids)) == len(set(task_ids)):
                break
            await asyncio.sleep(0.2)
    return round(time.monotonic() - started, 1)


async def inject_poison(run: Run, env: dict[str, str], queue: str) -> list[str]:
    """Put messages no worker can run straight onto the queue; return what each is."""
    unknown = json.dumps(UNKNOWN_TASK).encode()
    if run.broker == "redis":
        from redis.asyncio import Redis

        async with Redis(port=run.redis.port) as redis:
            await redis.xadd(queue, {b"data": b"\xff not json"})
            await redis.xadd(queue, {b"data": unknown})
            await redis.xadd(queue, {b"payload": b"no data field"})
        return ["unreadable", "unknown task", "no data field"]
    import aio_pika

    assert run.rabbitmq is not None
    connection = await aio_pika.connect(run.rabbitmq.url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(queue)
        await exchange.publish(aio_pika.Message(b"\xff not json"), routing_key=queue)
        await exchange.publish(aio_pika.Message(unknown), routing_key=queue)
    return ["unreadable", "unknown task"]


async def read_parked(run: Run, env: dict[str, str], queue: str) -> list[str]:
    """The reasons recorded with the parked poison messages."""
    if run.broker == "redis":
        from redis.asyncio import Redis

        async with Redis(port=run.redis.port) as redis:
            entries = await redis.xrange(f"{queue}:poison")
        return [fields[b"reason"].decode() for _, fields in entries]
    import aio_pika

    assert run.rabbitmq is not None
    reasons: list[str] = []
    connection = await aio_pika.connect(run.rabbitmq.url)
    async with connection:
        channel = await connection.channel()
        parked = await channel.get_queue(f"{queue}.poison", ensure=True)
        while (message := await parked.get(fail=False)) is not None:
            reasons.append(str((message.headers or {}).get("x-poison-reason")))
            await message.ack()
    return reasons


FINAL_STATES = frozenset({"success", "failure", "cancelled"})
STATES_BATCH = 400
# The bound: every task's state is final this long after the new worker started.
STATES_FINAL_WITHIN = 30.0


def shipped_env(run: Run, queue: str, **overrides: str) -> dict[str, str]:
    """A case's environment with the settings a new project has (run.env shortens some)."""
    env = run.env(queue)
    for name in ("TASKIQ_TASK_TIMEOUT_SECONDS", "TASKIQ_REDIS_IDLE_TIMEOUT_SECONDS"):
        env.pop(name, None)
    env.update(overrides)
    return env


async def task_states(url: str, task_ids: list[str]) -> dict[str, str]:
    """GET /tasks/{id} for each id: its status, or the HTTP status code when not 200."""
    states: dict[str, str] = {}
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def one(task_id: str) -> None:
            async with limit:
                response = await client.get(f"/tasks/{task_id}")
            ok = response.status_code == 200
            states[task_id] = response.json()["status"] if ok else str(response.status_code)

        await asyncio.gather(*(one(task_id) for task_id in task_ids))
    return states


async def wait_all_final(url: str, task_ids: list[str], until: float) -> dict[str, str]:
    """Poll the API until every task is final, or `until` (monotonic) passed; last states."""
    while True:
        states = await task_states(url, task_ids)
        if all(state in FINAL_STATES for state in states.values()) or time.monotonic() > until:
            return states
        await asyncio.sleep(0.5)


def state_figures(states: dict[str, str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    not_final = sorted(task_id for task_id, state in states.items() if state not in FINAL_STATES)
    return {"states": counts, "not_final": len(not_final), "not_final_sample": not_final[:10]}


async def case_crash_states(run: Run) -> dict[str, Any]:
    """(h) 400 notes through the API with shipped settings; the worker's process group is
    SIGKILLed mid-batch and a new worker started: every task's state ends final and true."""
    env = shipped_env(run, queue_name("h"))
    _, url = await run.start_api("h-api", env)
    first = await run.start_entry_point_worker("h-worker-1", env)
    sender = Sender(url, STATES_BATCH, "h-")
    sending = asyncio.create_task(sender.run())
    done_at_kill = await when_progress(run, "h-", STATES_BATCH // 4)
    first.kill_group(signal.SIGKILL)
    run.note(f"h-worker-1 killed ({done_at_kill} done)")
    await first.wait_exit(10)
    second = await run.start_entry_point_worker("h-worker-2", env)
    started = time.monotonic()
    await sending
    run.note("all sent")
    states = await wait_all_final(url, sender.accepted, started + STATES_FINAL_WITHIN)
    final_after = round(time.monotonic() - started, 1)
    run.note(f"states checked {final_after} s after h-worker-2 started")
    return await figures(
        run,
        sender.accepted,
        [first, second],
        0,  # every state is success only once its note exists: no extra wait
        completed_at_kill=done_at_kill,
        final_seconds_after_start=final_after,
        **state_figures(states),
    )


async def case_crash_window(run: Run) -> dict[str, Any]:
    """(i) A worker dies right after a message's ack, and (separately) right after the final
    state's write was issued: each task still ends `success`, with its note written once."""
    result: dict[str, Any] = {}
    procs: list[Proc] = []
    for point in ("ack", "write"):
        marks = markers(run, f"i-{point}")
        env = shipped_env(run, queue_name(f"i-{point}"), DELIVERY_MARKERS=str(marks))
        _, url = await run.start_api(f"i-{point}-api", env)
        doomed = await run.start_entry_point_worker(
            f"i-{point}-worker-1", {**env, "DELIVERY_KILL_AT": point}
        )
        procs.append(doomed)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            response = await client.post("/notes", json={"title": f"i-{point}", "body": ""})
            response.raise_for_status()
        task_id: str = response.json()["task_id"]
        await wait_marker(marks, "killed", point, within=60)
        doomed.kill_group(signal.SIGKILL)  # its parent would restart the child: all of it goes
        await doomed.wait_exit(10)
        killed = time.monotonic()
        procs.append(await run.start_entry_point_worker(f"i-{point}-worker-2", env))
        states = await wait_all_final(url, [task_id], killed + STATES_FINAL_WITHIN)
        done = await figures(run, [task_id], procs, 10)
        result[point] = {
            "state": states[task_id],
            "final_seconds_after_kill": round(time.monotonic() - killed, 1),
            "completed": done["completed"],
            "rows_over_one": done["rows_over_one"],
        }
    return result


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

CASES: dict[str, Callable[[Run], Awaitable[dict[str, Any]]]] = {
    "worker_crash": case_worker_crash,
    "broker_restart": case_broker_restart,
    "idle_queue_crash": case_idle_queue_crash,
    "delays": case_delays,
    "sigterm": case_sigterm,
    "poison": case_poison,
    "blocking_task": case_blocking_task,
    "crash_states": case_crash_states,
    "crash_window": case_crash_window,
    "postgres_restart": case_postgres_restart,
}


CASE_GROUPS = [
    ["idle_queue_crash", "delays", "sigterm", "poison", "blocking_task"],
    ["worker_crash"],
    ["postgres_restart"],
    ["broker_restart"],
    ["crash_window"],
    ["crash_states"],
]


async def run_case(base: Run, broker: str, name: str) -> dict[str, Any]:
    """One case, with processes and a timeline of its own; its errors are its result."""
    run = replace(base, processes=[], extra_services=[], events=[], case_started=time.monotonic())
    print(f"[delivery {broker}] {name} ...", flush=True)
    try:
        result = await CASES[name](run)
    except Exception:
        result = {"error": traceback.format_exc()}
    finally:
        await run.stop_all()
        for service in run.extra_services:
            await asyncio.to_thread(service.remove)
    result["seconds"] = round(time.monotonic() - run.case_started, 1)
    result["timeline"] = run.events
    return result


async def main(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path.cwd() / "src"))
    results: dict[str, Any] = {}
    out = workdir / "results.json"
    redis = PrivateRedis(workdir)
    rabbitmq = (
        PrivateRabbitMQ(workdir, f"delivery{uuid.uuid4().hex[:8]}")
        if args.broker == "rabbitmq"
        else None
    )
    run = Run(args.package, args.broker, workdir, redis, rabbitmq)
    (workdir / "markers").mkdir(exist_ok=True)
    try:
        redis.start()
        run.record_services()
        if rabbitmq is not None:
            await asyncio.to_thread(rabbitmq.start)
            run.record_services()
        await create_database(run)
        wanted = args.cases.split(",")
        # Light cases overlap (their time is mostly processes starting); the 1,000-task
        # batches run alone, and the broker restart last, since it disturbs every queue.
        groups = (
            [[name] for name in wanted]
            if args.serial
            else [[name for name in group if name in wanted] for group in CASE_GROUPS]
        )
        for group in groups:
            outcomes = await asyncio.gather(*(run_case(run, args.broker, name) for name in group))
            results.update(zip(group, outcomes, strict=True))
            out.write_text(json.dumps(results, indent=2, default=str))
    finally:
        await run.stop_all()
        with contextlib.suppress(Exception):
            await drop_database(run)
        if rabbitmq is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(rabbitmq.stop)
        redis.stop()
        out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", required=True)
    parser.add_argument("--broker", choices=["redis", "rabbitmq"], required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--serial", action="store_true", help="one case at a time")
    sys.exit(asyncio.run(main(parser.parse_args())))
