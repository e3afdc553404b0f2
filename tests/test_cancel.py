"""Task cancellation (DELETE /tasks/{id}, cancel_task()): in every combination, on both brokers.

Where the project has Redis the task states and cancels live there (pub/sub to the workers);
without Redis (broker=rabbitmq, result_backend=none) they live in the database (a table and
its migration; workers poll, and LISTEN on PostgreSQL). Once per broker, a project runs its
own `-m cancel` tests: unit tests on the in-memory broker, and integration tests with a real
worker process, API process, broker and PostgreSQL.
"""

from __future__ import annotations

import re
from pathlib import Path

import helpers
import pytest
from conftest import RenderCache, Rendered, RunFeatureTests
from helpers import Combo

pytestmark = pytest.mark.cancel

ALWAYS = (
    "src/{pkg}/infrastructure/task_status/router.py",
    "src/{pkg}/infrastructure/task_status/service.py",
    "src/{pkg}/infrastructure/task_status/middleware.py",
    "src/{pkg}/infrastructure/task_status/running.py",
    "src/{pkg}/infrastructure/task_status/memory_store.py",
    "tests/integration/cancel_tasks.py",
    "tests/integration/test_cancel.py",
    "tests/unit/test_cancel.py",
    "tests/unit/test_tasks_api.py",
)
REDIS_ONLY = ("src/{pkg}/infrastructure/task_status/redis_store.py",)
DATABASE_ONLY = (
    "src/{pkg}/infrastructure/task_status/database_store.py",
    "src/{pkg}/infrastructure/task_status/models.py",
    "migrations/versions/0004_cancel.py",
    "tests/unit/test_database_task_states.py",
)
INTEGRATION_TESTS = (
    "test_a_running_task_is_interrupted_within_a_second_and_cleans_up",
    "test_a_queued_task_that_is_cancelled_never_runs",
    "test_a_finished_task_answers_409",
    "test_an_unknown_task_answers_404",
    "test_cancelled_tasks_were_acknowledged",
)


# Redis broker (states in Redis), and RabbitMQ without any Redis (states in the database).
COMBOS = [
    helpers.pick_combo({"broker": "redis", "result_backend": "redis", "include_email": False}),
    helpers.pick_combo({"broker": "rabbitmq", "result_backend": "none", "include_email": False}),
]
# The other two ways to have Redis or not, for the file checks only.
ALL_STORES = [
    *COMBOS,
    helpers.pick_combo({"broker": "redis", "result_backend": "none"}),
    helpers.pick_combo({"broker": "rabbitmq", "result_backend": "redis"}),
]


def _path(rendered: Rendered, relative: str) -> Path:
    return rendered.path / relative.format(pkg=rendered.combo.package)


@pytest.mark.parametrize("combo", ALL_STORES, ids=str)
def test_the_store_follows_whether_the_project_has_redis(
    render_cache: RenderCache, combo: Combo
) -> None:
    rendered = render_cache(combo)
    has_redis = combo.derived["needs_redis"]

    for relative in ALWAYS:
        assert _path(rendered, relative).is_file(), relative
    for relative in REDIS_ONLY:
        assert _path(rendered, relative).is_file() == has_redis, relative
    for relative in DATABASE_ONLY:
        assert _path(rendered, relative).is_file() == (not has_redis), relative
    assert "app.include_router(tasks_router)" in _path(rendered, "src/{pkg}/main.py").read_text()
    assert re.search(
        r"^TASKIQ_TASK_STATE_TTL_SECONDS=", _path(rendered, ".env.example").read_text(), re.M
    )
    assert '"cancel: ' in _path(rendered, "pyproject.toml").read_text()
    if not has_redis:
        migration = _path(rendered, "migrations/versions/0004_cancel.py").read_text()
        assert 'revision: str = "0004_cancel"' in migration
        assert 'down_revision: str | None = "0001"' in migration
        assert '("cancel",)' in migration


@pytest.mark.parametrize("combo", COMBOS, ids=str)
def test_the_generated_cancel_tests_pass_against_real_services(
    run_feature_tests: RunFeatureTests, combo: Combo
) -> None:
    proc = run_feature_tests(combo, "cancel")
    # The real worker, API, broker and database were used.
    for test in INTEGRATION_TESTS:
        assert re.search(rf"test_cancel\.py::{test} PASSED", proc.stdout), f"{test} did not pass"
