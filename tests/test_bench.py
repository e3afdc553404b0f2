"""The generated benchmark command (`python -m bench`, `make bench`).

Once per broker (with Redis, and RabbitMQ without any Redis), the command runs end to end on
a few tasks against the real services, prints its lines and leaves nothing behind: no
table, no task states, no Redis keys. (Too slow for the generated projects' own suites:
starting a worker and an API process takes longer than the ~5 s a test there may take.)
Nothing here measures speed: tests/bench/run.py does, and no test asserts a time.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import helpers
import pytest
from conftest import RenderCache
from helpers import Combo

pytestmark = pytest.mark.bench

FILES = (
    "bench/__init__.py",
    "bench/__main__.py",
    "bench/cleanup.py",
    "bench/processes.py",
    "bench/progress.py",
    "bench/report.py",
    "bench/samples.py",
    "bench/tasks.py",
    "tests/unit/test_bench_report.py",
)

# Reports what a run left behind (in the project's venv).
_LEFTOVERS = """
import asyncio, json, sys
import asyncpg

async def main(database, redis_url, prefix):
    connection = await asyncpg.connect(database)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'bench\\\\_%'"
        )
        has_states = await connection.fetchval("SELECT to_regclass('task_states') IS NOT NULL")
        states = await connection.fetchval("SELECT count(*) FROM task_states") if has_states else 0
    finally:
        await connection.close()
    keys = []
    if redis_url:
        from redis.asyncio import Redis
        async with Redis.from_url(redis_url) as redis:
            keys = [k.decode() async for k in redis.scan_iter(match=prefix + "*")]
    print(json.dumps({"tables": [r[0] for r in tables], "states": states, "keys": keys}))

asyncio.run(main(*sys.argv[1:]))
"""


def _pick(**wanted: object) -> Combo:
    for combo in helpers.combos():
        if all(combo.answers.get(name) == value for name, value in wanted.items()):
            return combo
    raise AssertionError(f"no combination with {wanted}")


COMBOS = [
    _pick(broker="redis", result_backend="redis", include_email=False),
    _pick(broker="rabbitmq", result_backend="none", include_email=False),
]


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_the_bench_command_is_generated(render_cache: RenderCache, combo: Combo) -> None:
    rendered = render_cache(combo)
    for relative in FILES:
        assert (rendered.path / relative.format(pkg=combo.package)).is_file(), relative
    makefile = (rendered.path / "Makefile").read_text()
    assert "python -m bench" in makefile
    assert " bench " in makefile.splitlines()[2]  # .PHONY
    readme = (rendered.path / "README.md").read_text()
    assert "python -m bench" in readme
    # The bench tasks never reach the production worker: no module of it imports them.
    worker = (rendered.path / "src" / combo.package / "worker.py").read_text()
    assert "bench" not in worker


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_the_bench_command_runs_and_leaves_nothing_behind(
    render_cache: RenderCache,
    combo: Combo,
    shared_python: Callable[[str], Path],
    require_services: Callable[[list[str]], None],
) -> None:
    require_services(combo.derived["services"])
    rendered = render_cache(combo)
    python = str(shared_python(str(combo.answers["python_version"])))
    env = helpers.generated_test_env(combo)
    admin = env["TEST_POSTGRES_URL"]
    name = f"test_bench_{uuid.uuid4().hex[:10]}"
    database = admin.rsplit("/", 1)[0] + f"/{name}"
    queue = f"test-bench-{uuid.uuid4().hex[:10]}"
    env.update(
        DATABASE_URL=database,
        TASKIQ_ENABLED="true",
        TASKIQ_QUEUE_NAME=queue,
        PYTHONPATH=os.pathsep.join([str(rendered.path / "src"), env.get("PYTHONPATH", "")]),
    )
    redis_url = ""
    if combo.derived["needs_redis"]:
        redis_url = "redis://{}:{}/{}".format(
            env["TASKIQ_REDIS_HOST"], env["TASKIQ_REDIS_PORT"], env["TASKIQ_REDIS_DB"]
        )
    plain_admin = admin.replace("+asyncpg", "")
    created = helpers.run(
        [python, "-c", helpers.DATABASE_SCRIPT, plain_admin, "create", name], rendered.path
    )
    assert created.returncode == 0, helpers.explain(created)
    try:
        migrated = helpers.run([python, "-m", "alembic", "upgrade", "heads"], rendered.path, env)
        assert migrated.returncode == 0, helpers.explain(migrated)

        command = [python, "-m", "bench", "-n", "20", "--api-requests", "20"]
        command += ["--workers", "1", "--timeout", "120"]
        proc = helpers.run(command, rendered.path, env, timeout=400)

        assert proc.returncode == 0, helpers.explain(proc)
        lines = proc.stdout.splitlines()
        for prefix in ("noop burst: 20 tasks", "noop paced at", "db burst: 20 tasks", "db paced"):
            assert any(line.startswith(prefix) for line in lines), helpers.explain(proc)
        assert any(
            line.startswith("api POST /notes, 20 at a time: 20 requests") for line in lines
        ), helpers.explain(proc)
        assert "[##############################] 20/20" in proc.stderr  # the progress bars
        assert proc.leftovers == [], proc.leftovers  # the worker and the API were stopped

        plain = database.replace("+asyncpg", "")
        check = helpers.run([python, "-c", _LEFTOVERS, plain, redis_url, queue], rendered.path)
        assert check.returncode == 0, helpers.explain(check)
        left = json.loads(check.stdout)
        assert left == {"tables": [], "states": 0, "keys": []}
    finally:
        helpers.run(
            [python, "-c", helpers.DATABASE_SCRIPT, plain_admin, "drop", name], rendered.path
        )
