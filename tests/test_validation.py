"""Bad answers are refused with their validator's message, and nothing is written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helpers
import pytest
import yaml
from conftest import Rendered
from pytest_copie.plugin import Copie

pytestmark = pytest.mark.matrix

# (answers, text the error must contain). Messages come from copier.yml's validators, or from
# copier itself for answers outside a question's choices.
BAD_ANSWERS: list[tuple[str, dict[str, Any], str]] = [
    ("empty-project-name", {"project_name": ""}, "project_name must not be empty"),
    ("blank-project-name", {"project_name": "   "}, "project_name must not be empty"),
    ("slug-space", {"project_slug": "My Slug"}, 'project_slug "My Slug" must start with a letter'),
    ("slug-dash", {"project_slug": "-x"}, 'project_slug "-x" must start with a letter'),
    ("slug-digit", {"project_slug": "9abc"}, 'project_slug "9abc" must start with a letter'),
    (
        "package-keyword",
        {"package_name": "class"},
        'package_name "class" must be a lowercase Python identifier',
    ),
    (
        "package-stdlib",
        {"package_name": "json"},
        'package_name "json" would shadow a Python module or a dependency',
    ),
    (
        "package-dependency",
        {"package_name": "taskiq"},
        'package_name "taskiq" would shadow a Python module or a dependency',
    ),
    (
        "package-not-identifier",
        {"package_name": "My-Pkg"},
        'package_name "My-Pkg" must be a lowercase Python identifier',
    ),
    (
        "package-too-long",
        {"package_name": "customer_onboarding_service"},
        'package_name "customer_onboarding_service" is 27 characters; keep it to 20 or fewer',
    ),
    ("email-no-at", {"author_email": "jane.example.com"}, "is not a valid email address"),
    ("email-no-tld", {"author_email": "jane@localhost"}, "is not a valid email address"),
    ("redis-db-16", {"redis_db": 16}, "redis_db must be an integer from 0 to 15 (got 16)"),
    ("redis-db-negative", {"redis_db": -1}, "redis_db must be an integer from 0 to 15 (got -1)"),
    ("python-3.11", {"python_version": "3.11"}, "Invalid choice for 'python_version'"),
    ("broker-kafka", {"broker": "kafka"}, "Invalid choice for 'broker'"),
]


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if not p.is_dir()] if path.exists() else []


@pytest.mark.parametrize(
    ("answers", "message"),
    [pytest.param(answers, message, id=case) for case, answers, message in BAD_ANSWERS],
)
def test_bad_answer_is_refused(copie: Copie, answers: dict[str, Any], message: str) -> None:
    result = copie.copy(extra_answers=answers)
    assert result.exit_code != 0 and result.exception is not None, "the bad answer was accepted"
    assert message in str(result.exception), f"unexpected error: {result.exception!r}"
    # copie renders into <test_dir>/copieNNN: nothing may be left there
    dst = copie.test_dir
    assert not _files_under(dst), f"files left behind: {_files_under(dst)}"


def test_default_answers_render(copie: Copie) -> None:
    result = copie.copy()
    assert result.exception is None and result.project_dir is not None, repr(result.exception)
    dst = result.project_dir
    recorded = yaml.safe_load((dst / helpers.answers_file_name()).read_text(encoding="utf-8"))
    for name, spec in helpers.questions().items():
        if "default" in spec and not str(spec["default"]).startswith("{{") and name in recorded:
            assert recorded[name] == spec["default"], name


SECRET_KEY = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential", re.I)


@pytest.mark.parametrize("combo", helpers.combos(), ids=str)
def test_answers_file_holds_no_secrets(rendered: Rendered) -> None:
    recorded = yaml.safe_load(
        (rendered.path / helpers.answers_file_name()).read_text(encoding="utf-8")
    )
    assert isinstance(recorded, dict)
    leaked = [key for key in recorded if SECRET_KEY.search(str(key))]
    assert not leaked, f"secret-looking keys in {helpers.answers_file_name()}: {leaked}"


@pytest.mark.parametrize("combo", helpers.combos(), ids=str)
def test_redis_db_recorded_only_with_redis(rendered: Rendered) -> None:
    recorded = yaml.safe_load(
        (rendered.path / helpers.answers_file_name()).read_text(encoding="utf-8")
    )
    if rendered.combo.derived["needs_redis"]:
        assert recorded.get("redis_db") == rendered.combo.answers["redis_db"]
    else:
        assert "redis_db" not in recorded, (
            "redis_db is recorded for a project without Redis "
            f"(broker={recorded.get('broker')}, result_backend={recorded.get('result_backend')})"
        )


def test_redis_db_absent_without_redis(copie: Copie) -> None:
    """Explicitly: broker=rabbitmq with no result backend asks no Redis question."""
    result = copie.copy(extra_answers={"broker": "rabbitmq", "result_backend": "none"})
    assert result.project_dir is not None, repr(result.exception)
    dst = result.project_dir
    recorded = yaml.safe_load((dst / helpers.answers_file_name()).read_text(encoding="utf-8"))
    assert "redis_db" not in recorded


def test_readme_documents_every_question() -> None:
    """README.md's question table names every question of copier.yml."""
    readme = (helpers.REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in helpers.questions() if f"| `{name}` |" not in readme]
    assert not missing, f"README.md does not document: {missing}"
