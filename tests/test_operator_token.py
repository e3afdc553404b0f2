"""The operator token: each project its own, only in .env, kept and added by `copier update`."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import helpers
import pytest

pytestmark = pytest.mark.deploy

TOKEN = re.compile(r"(?m)^OPERATOR_TOKEN=(?P<value>.*)$")


def token_of(text: str) -> str:
    found = [match["value"] for match in TOKEN.finditer(text)]
    assert len(found) == 1, f"expected one OPERATOR_TOKEN line, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    answers = {"include_scheduler": False, "include_email": False, "include_retry": False}
    first = helpers.render(tmp_path_factory.mktemp("one") / "p", answers)
    second = helpers.render(tmp_path_factory.mktemp("two") / "p", answers)
    return first, second


def test_each_project_gets_its_own_random_token(two_projects: tuple[Path, Path]) -> None:
    tokens = [token_of((project / ".env").read_text()) for project in two_projects]

    assert all(len(token) >= 40 for token in tokens), "secrets.token_urlsafe(32) is 43 chars"
    assert tokens[0] != tokens[1]


def test_env_with_the_token_is_readable_by_its_owner_only(two_projects: tuple[Path, Path]) -> None:
    mode = stat.S_IMODE((two_projects[0] / ".env").stat().st_mode)

    assert mode == 0o600


def test_the_token_is_in_no_other_file(two_projects: tuple[Path, Path]) -> None:
    project = two_projects[0]
    token = token_of((project / ".env").read_text())

    assert token_of((project / ".env.example").read_text()) == ""
    holders = [
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file() and path.name != ".env" and token.encode() in path.read_bytes()
    ]
    assert not holders
    assert token not in (project / helpers.answers_file_name()).read_text()


def run_sync_env(project: Path) -> None:
    script = helpers.REPO_ROOT / "extensions" / "tasks" / "sync_env.py"
    subprocess.run([sys.executable, str(script), "--broker", "redis"], cwd=project, check=True)


def test_the_copier_task_keeps_a_set_token_and_fills_a_missing_one(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("OPERATOR_TOKEN=mine\nTASKIQ_BROKER_TYPE=redis\n")
    run_sync_env(tmp_path)
    assert env.read_text() == "OPERATOR_TOKEN=mine\nTASKIQ_BROKER_TYPE=redis\n"

    env.write_text("TASKIQ_BROKER_TYPE=redis\r\nOPERATOR_TOKEN=\r\nLOG_LEVEL=INFO")
    run_sync_env(tmp_path)
    text = env.read_bytes().decode()
    assert len(token_of(text.replace("\r", ""))) >= 40
    assert text.startswith("TASKIQ_BROKER_TYPE=redis\r\nOPERATOR_TOKEN=")
    assert text.endswith("\r\nLOG_LEVEL=INFO")
