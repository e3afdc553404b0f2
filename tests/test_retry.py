"""The include_retry option: what it adds, what it leaves out, and its generated tests.

Once per broker, a project with include_retry runs its own `-m retry` tests in the shared venv:
the backoff and label unit tests, the in-memory middleware and API tests, and the integration
tests with a real worker process, the real broker (whose delay support the backoff relies on)
and PostgreSQL.
"""

from __future__ import annotations

import re

import helpers
import pytest
from conftest import RenderCache, RunFeatureTests
from helpers import Combo

pytestmark = pytest.mark.retry

RETRY_SETTINGS = (
    "TASKIQ_RETRY_MAX_RETRIES",
    "TASKIQ_RETRY_BASE_DELAY_SECONDS",
    "TASKIQ_RETRY_MAX_DELAY_SECONDS",
    "TASKIQ_RETRY_JITTER_SECONDS",
)
RETRY_FILES = (
    "src/{pkg}/infrastructure/taskiq/retry.py",
    "src/{pkg}/infrastructure/dead_letters/models.py",
    "src/{pkg}/infrastructure/dead_letters/router.py",
    "src/{pkg}/infrastructure/dead_letters/service.py",
    "src/{pkg}/infrastructure/dead_letters/cli.py",
    "migrations/versions/0003_retry.py",
    "tests/integration/retry_tasks.py",
    "tests/integration/test_retry.py",
    "tests/unit/test_retry_policy.py",
    "tests/unit/test_dead_letters.py",
)
INTEGRATION_TESTS = (
    "test_a_task_that_fails_twice_then_succeeds_runs_three_times_with_growing_gaps",
    "test_a_task_that_always_fails_is_dead_lettered_after_max_retries",
    "test_a_redriven_dead_letter_runs_again",
    "test_an_exception_not_in_the_list_is_not_retried",
)

# One project per broker, and between them both result backends.
_PREFERRED = {
    "redis": {"result_backend": "redis"},
    "rabbitmq": {"result_backend": "none"},
}


RETRY_COMBOS = [
    helpers.pick_combo({"broker": broker, "include_retry": True}, preferred)
    for broker, preferred in _PREFERRED.items()
]
PLAIN_COMBOS = [
    helpers.pick_combo({"broker": broker, "include_retry": False}, preferred)
    for broker, preferred in _PREFERRED.items()
]


@pytest.mark.parametrize("combo", RETRY_COMBOS, ids=str)
def test_the_option_adds_the_middleware_dead_letters_settings_and_migration(
    render_cache: RenderCache, combo: Combo
) -> None:
    rendered = render_cache(combo)

    for relative in RETRY_FILES:
        assert (rendered.path / relative.format(pkg=combo.package)).is_file(), relative
    middlewares = rendered.read("src/{pkg}/infrastructure/taskiq/middlewares.py")
    assert "middlewares.append(RetryMiddleware.from_settings(" in middlewares
    assert "app.include_router(dead_letters_router, **OPERATOR_ONLY)" in rendered.read(
        "src/{pkg}/main.py"
    )
    env_example = rendered.read(".env.example")
    settings = rendered.read("src/{pkg}/infrastructure/config/settings.py")
    for variable in RETRY_SETTINGS:
        assert re.search(rf"^{variable}=", env_example, re.MULTILINE), variable
        assert f"    {variable.lower()}:" in settings, variable
    migration = rendered.read("migrations/versions/0003_retry.py")
    assert 'revision: str = "0003_retry"' in migration
    assert 'down_revision: str | None = "0001"' in migration
    assert '("retry",)' in migration
    assert '"retry: ' in rendered.read("pyproject.toml")
    readme = rendered.read("README.md")
    assert "retry_on_error=True" in readme
    assert "infrastructure.dead_letters.cli" in readme


@pytest.mark.parametrize("combo", PLAIN_COMBOS, ids=str)
def test_without_the_option_there_is_no_retry_code(render_cache: RenderCache, combo: Combo) -> None:
    rendered = render_cache(combo)

    for relative in RETRY_FILES:
        assert not (rendered.path / relative.format(pkg=combo.package)).exists(), relative
    assert not (rendered.package_dir / "modules" / "dead_letters").exists()
    for relative in (
        ".env.example",
        "pyproject.toml",
        "README.md",
        "src/{pkg}/main.py",
        "src/{pkg}/infrastructure/config/settings.py",
        "src/{pkg}/infrastructure/taskiq/middlewares.py",
        "src/{pkg}/infrastructure/taskiq/registry.py",
    ):
        text = rendered.read(relative)
        assert not re.search(r"retry|dead.letters|failed_tasks", text, re.IGNORECASE), relative


@pytest.mark.parametrize("combo", RETRY_COMBOS, ids=str)
def test_the_generated_retry_tests_pass_against_real_services(
    run_feature_tests: RunFeatureTests, combo: Combo
) -> None:
    proc = run_feature_tests(combo, "retry")
    # The real worker, broker and database were used.
    for test in INTEGRATION_TESTS:
        assert re.search(rf"test_retry\.py::{test} PASSED", proc.stdout), f"{test} did not pass"
