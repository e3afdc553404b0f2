"""Side-by-side benchmark: the generated worker and API against bare taskiq, Celery and the
brokers' raw rates, on this machine's Redis, RabbitMQ and PostgreSQL.

    uv run python tests/bench/run.py --quick      # a few minutes
    uv run python tests/bench/run.py              # longer trials, more rounds
    uv run python tests/bench/run.py --quick --sections costs --brokers redis
                                                  # what each generated feature costs

Renders the template (defaults, once per broker), builds a venv with every generated
dependency plus Celery, gives each project a PostgreSQL database of its own, then runs
driver.py in that venv; everything it creates is removed at the end. Progress goes to stderr;
the results go to stdout, one `ratio <name>: <value>` line per comparison (README.md,
"Benchmarks"). Nothing here asserts a time: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import helpers  # noqa: E402  (tests/helpers.py: rendering, shared venvs, service addresses)

sys.path.insert(0, str(HERE.parent / "delivery"))
from services import PrivatePostgres  # noqa: E402  (initdb + pg_ctl on a free port)

# Rendered with these answers: the defaults, with the broker varied (and a name per broker,
# so the driver can import both packages side by side).
PROJECTS = {
    "redis": {"project_name": "Perf Redis", "broker": "redis"},
    "rabbitmq": {"project_name": "Perf Rabbit", "broker": "rabbitmq"},
}
EXTRA_REQUIREMENTS = ["celery[redis]>=5.4"]
PYTHON_VERSION = "3.12"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def check(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stdout}\n{proc.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument(
        "--sections",
        default="throughput,rss,api",
        help="comma-separated: throughput, rss, api, db, costs (db: row-writing tasks on a"
        " private PostgreSQL; costs: one feature left out at a time)",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3 quick, 5)")
    parser.add_argument("--tasks", type=int, help="tasks per trial (default 4000 quick, 20000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=100, help="tasks per process")
    parser.add_argument("--keep", action="store_true", help="keep the rendered projects")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    tasks = args.tasks or (4000 if args.quick else 20000)
    api_requests = 1000 if args.quick else 5000
    brokers = [b for b in args.brokers.split(",") if b]

    addresses = helpers.service_addresses()
    down = [
        name for name, (host, port) in addresses.items() if not helpers.is_reachable(host, port)
    ]
    if down:
        raise SystemExit(f"services not reachable: {', '.join(down)}")

    began = time.monotonic()
    interpreter, how = helpers.find_interpreter(PYTHON_VERSION)
    if interpreter is None:
        raise SystemExit(how)
    log("building the bench venv (cached under .cache/envs)")
    python = helpers.shared_env(
        PYTHON_VERSION, interpreter, helpers.union_requirements() + EXTRA_REQUIREMENTS
    )

    workdir = Path(tempfile.mkdtemp(prefix="taskiq-bench-"))
    admin = os.environ.get("TEST_POSTGRES_URL", helpers.DEFAULT_POSTGRES_URL)
    admin_plain = admin.replace("+asyncpg", "")
    run_id = uuid.uuid4().hex[:8]
    databases: dict[str, str] = {}
    redis_host, redis_port = addresses["redis"]
    redis_db = 3
    sections = set(args.sections.split(","))
    # The `db` section's PostgreSQL is a cluster of its own, so its CPU is this run's alone.
    postgres = PrivatePostgres() if "db" in sections else None
    try:
        db_databases: dict[str, str] = {}
        if postgres is not None:
            log("starting a private PostgreSQL for the db section")
            postgres.start()
        projects: dict[str, Path] = {}
        packages: dict[str, str] = {}
        backends: dict[str, str] = {}
        for broker in brokers:
            answers = {**PROJECTS[broker], "redis_db": redis_db}
            log(f"rendering the {broker} project")
            projects[broker] = helpers.render(workdir / broker, answers)
            packages[broker] = (
                helpers.context_module().slugify(answers["project_name"]).replace("-", "_")
            )
            backends[broker] = str(helpers.copier_config()["result_backend"]["default"])
            name = f"bench_{run_id}_{broker}"
            check([str(python), "-c", helpers.DATABASE_SCRIPT, admin_plain, "create", name])
            databases[broker] = admin.rsplit("/", 1)[0] + f"/{name}"
            env = {**os.environ, "DATABASE_URL": databases[broker], "TASKIQ_ENABLED": "false"}
            env.pop("VIRTUAL_ENV", None)
            check([str(python), "-m", "alembic", "upgrade", "heads"], projects[broker], env)
            if postgres is not None:
                db_name = f"bench_db_{broker}"
                check([str(python), "-c", helpers.DATABASE_SCRIPT, postgres.admin_dsn, "create",
                       db_name])  # fmt: skip
                db_databases[broker] = postgres.url(db_name)
                env = {**env, "DATABASE_URL": db_databases[broker]}
                check([str(python), "-m", "alembic", "upgrade", "heads"], projects[broker], env)
        rabbit_host, rabbit_port = addresses["rabbitmq"]
        config = {
            "python": str(python),
            "redis_url": f"redis://{redis_host}:{redis_port}/{redis_db}",
            "rabbitmq_url": f"amqp://guest:guest@{rabbit_host}:{rabbit_port}/",
            "database_urls": databases,
            "projects": {k: str(v) for k, v in projects.items()},
            "packages": packages,
            "result_backends": backends,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "redis_host": redis_host,
            "redis_port": redis_port,
            "redis_db": redis_db,
            "db_database_urls": db_databases,
            "postgres_data": str(postgres.data) if postgres else "",
        }
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        log(f"ready after {time.monotonic() - began:.0f} s; measuring")
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
        command = [
            str(python),
            str(HERE / "driver.py"),
            "--config",
            str(config_path),
            "--brokers",
            ",".join(brokers),
            "--sections",
            args.sections,
            "--rounds",
            str(rounds),
            "--tasks",
            str(tasks),
            "--api-requests",
            str(api_requests),
        ]
        status = subprocess.run(command, cwd=HERE, env=env, check=False).returncode
        log(f"done in {time.monotonic() - began:.0f} s")
        return status
    finally:
        if postgres is not None:
            postgres.remove()
        for url in databases.values():
            name = urlsplit(url).path.lstrip("/")
            subprocess.run(
                [str(python), "-c", helpers.DATABASE_SCRIPT, admin_plain, "drop", name],
                capture_output=True,
                check=False,
            )
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
