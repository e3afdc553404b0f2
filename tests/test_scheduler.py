"""The include_scheduler option: what it adds, what it leaves out, and its generated tests.

Two projects with the scheduler run their own `-m scheduler` tests in the shared venv: one
with Redis (Redis lock, ListRedisScheduleSource, a result backend) and one without Redis
(RabbitMQ, the `cron_locks` row lock, the `schedules` table, no result backend). Those tests
use two real worker processes, a real `taskiq scheduler` process, the broker and PostgreSQL.
"""

from __future__ import annotations

import re

import helpers
import pytest
from conftest import RenderCache, RunFeatureTests
from helpers import Combo

pytestmark = pytest.mark.scheduler

SCHEDULER_FILES = (
    "src/{pkg}/scheduler.py",
    "src/{pkg}/infrastructure/scheduling/cron.py",
    "src/{pkg}/infrastructure/scheduling/expressions.py",
    "src/{pkg}/infrastructure/scheduling/locks.py",
    "src/{pkg}/infrastructure/scheduling/models.py",
    "src/{pkg}/infrastructure/scheduling/router.py",
    "src/{pkg}/infrastructure/scheduling/runs.py",
    "src/{pkg}/infrastructure/scheduling/schemas.py",
    "src/{pkg}/infrastructure/scheduling/service.py",
    "src/{pkg}/infrastructure/scheduling/sources.py",
    "src/{pkg}/infrastructure/scheduling/ticks.py",
    "src/{pkg}/infrastructure/maintenance/tasks.py",
    "migrations/versions/0002_scheduler.py",
    "tests/integration/cron_tasks.py",
    "tests/integration/test_scheduler.py",
    "tests/unit/test_cron_expressions.py",
    "tests/unit/test_scheduling.py",
)
INTEGRATION_TESTS = (
    "test_two_workers_run_a_tick_sent_twice_once",
    "test_a_tick_goes_ahead_once_a_held_lock_expired",
    "test_a_failing_job_is_recorded_and_its_error_propagates",
    "test_a_schedule_added_through_the_api_fires_until_it_is_deleted",
)


# With Redis (its lock and schedule source) and without (the database's).
SCHEDULER_COMBOS = [
    helpers.pick_combo({"include_scheduler": True, "broker": "redis", "result_backend": "redis"}),
    helpers.pick_combo({"include_scheduler": True, "broker": "rabbitmq", "result_backend": "none"}),
]
PLAIN_COMBOS = [
    helpers.pick_combo({"include_scheduler": False, "broker": "redis", "result_backend": "redis"}),
    helpers.pick_combo(
        {"include_scheduler": False, "broker": "rabbitmq", "result_backend": "none"}
    ),
]


@pytest.mark.parametrize("combo", SCHEDULER_COMBOS, ids=str)
def test_the_option_adds_the_scheduler_its_api_and_its_migration(
    render_cache: RenderCache, combo: Combo
) -> None:
    rendered = render_cache(combo)

    for relative in SCHEDULER_FILES:
        assert (rendered.path / relative.format(pkg=combo.package)).is_file(), relative
    scheduler = rendered.read("src/{pkg}/scheduler.py")
    assert "scheduler = TickStampingScheduler(" in scheduler
    assert "LabelScheduleSource(broker)" in scheduler
    sources = rendered.read("src/{pkg}/infrastructure/scheduling/sources.py")
    locks = rendered.read("src/{pkg}/infrastructure/scheduling/locks.py")
    migration = rendered.read("migrations/versions/0002_scheduler.py")
    if combo.derived["needs_redis"]:
        assert "ListRedisScheduleSource(" in sources
        assert "serializer=ORJSONSerializer()" in sources
        assert 'prefix=f"{settings.taskiq_queue_name}:schedule"' in sources
        assert "nx=True, px=" in locks
        assert '"cron_locks"' not in migration
    else:
        assert "class DatabaseScheduleSource(ScheduleSource)" in sources
        assert "on_conflict_do_update(" in locks
        assert '"cron_locks"' in migration
        assert '"schedules"' in migration
    assert 'revision: str = "0002_scheduler"' in migration
    assert 'down_revision: str | None = "0001"' in migration
    assert '("scheduler",)' in migration
    main = rendered.read("src/{pkg}/main.py")
    assert "app.include_router(scheduling_router, **OPERATOR_ONLY)" in main
    assert "open_schedule_source(" in main
    assert re.search(r"^CRON_RUNS_RETENTION_DAYS=", rendered.read(".env.example"), re.M)
    assert '"scheduler: ' in rendered.read("pyproject.toml")
    readme = rendered.read("README.md")
    assert "Run exactly one scheduler" in readme
    assert f"taskiq scheduler {combo.package}.scheduler:scheduler" in readme


@pytest.mark.parametrize("combo", PLAIN_COMBOS, ids=str)
def test_without_the_option_there_is_no_scheduler_code(
    render_cache: RenderCache, combo: Combo
) -> None:
    rendered = render_cache(combo)

    for relative in SCHEDULER_FILES:
        assert not (rendered.path / relative.format(pkg=combo.package)).exists(), relative
    for relative in (
        ".env.example",
        "pyproject.toml",
        "Makefile",
        "src/{pkg}/main.py",
        "src/{pkg}/infrastructure/config/settings.py",
    ):
        text = rendered.read(relative)
        assert not re.search(r"cron|schedul|tzdata", text, re.IGNORECASE), relative
    readme = rendered.read("README.md")
    assert not re.search(r"cron|taskiq scheduler|/schedules", readme, re.IGNORECASE)
    assert "scheduler" not in rendered.read("compose.yaml")


@pytest.mark.parametrize("combo", SCHEDULER_COMBOS, ids=str)
def test_the_generated_scheduler_tests_pass_against_real_services(
    run_feature_tests: RunFeatureTests, combo: Combo
) -> None:
    proc = run_feature_tests(combo, "scheduler")
    # The real workers, scheduler, broker and database were used.
    for test in INTEGRATION_TESTS:
        assert re.search(rf"test_scheduler\.py::{test} PASSED", proc.stdout), f"{test} did not pass"
