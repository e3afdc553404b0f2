"""`copier update` from the last release (0.1.0) to this working tree, across the layout move.

0.1.0 kept the template's task machinery under `modules/` (task_status, scheduling,
dead_letters, maintenance, health) and the worker and scheduler entry points under
`infrastructure/taskiq/`; this tree has them under `infrastructure/` and at the package's top.
A project generated at 0.1.0, with a feature of the user's own and edits inside and outside the
moved files, is updated as a user would, in temporary repositories:

* the template: release 0.1.0 (`git archive` of its commit in this repository's history),
  tagged 0.1.0, then this working tree on top, tagged 0.2.0 (so the migrations of the next
  release run as they will for users);
* the project: copied at 0.1.0, committed, edited, committed, updated to 0.2.0.

What the CHANGELOG promises is what is checked here: the user's own modules and edits outside
the moved files are kept, the old packages are gone, imports follow the layers, and an edit
inside a moved file stays where the user made it, with the update's note on how to carry it
over.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import helpers
import pytest
from conftest import unavailable
from helpers import REPO_ROOT
from test_update import (
    NEW_IDLE,
    OLD_IDLE,
    Edit,
    commit_all,
    copy,
    git,
    git_init,
    leftovers,
    snapshot_working_tree,
)
from test_update import update as copier_update

pytestmark = pytest.mark.update

# The commit of release 0.1.0 ("Release 0.1.0: ..."; its tag has not travelled with clones).
RELEASE_0_1_0 = "ae5945d3b470a08d13a5cf6456f91d02caeab0d6"
OLD, NEW = "0.1.0", "0.2.0"
PKG = "upgrade_check"
ANSWERS = {
    "project_name": "Upgrade Check",
    "broker": "redis",
    "result_backend": "redis",
    "include_scheduler": True,
    "include_retry": True,
    "include_email": True,
}

# Packages that moved from modules/ to infrastructure/ (0.1.0 -> 0.2.0).
MOVED = ("task_status", "scheduling", "dead_letters", "maintenance", "health")

OWN_TASKS = '''\
"""Reports: a feature of our own."""

from {pkg}.infrastructure.taskiq.registry import register_task


@register_task("reports:count_words")
async def count_words(text: str) -> int:
    return len(text.split())
'''

EDIT_OUTSIDE = Edit(
    "src/{pkg}/modules/notes/service.py",
    '"""',
    '"""Notes (our edit: reviewed for the audit).\n\n',
)
OWN_MODULE = [
    Edit("src/{pkg}/modules/reports/__init__.py", None, ""),
    Edit("src/{pkg}/modules/reports/tasks.py", None, OWN_TASKS),
]
AUDIT = '"""Our own helper, next to the task states."""\n'
OWN_FILE_IN_MOVED = Edit("src/{pkg}/modules/task_status/audit.py", None, AUDIT)
# Inside a file that moves: modules/dead_letters/router.py -> infrastructure/dead_letters/.
EDIT_INSIDE = Edit(
    "src/{pkg}/modules/dead_letters/router.py",
    'router = APIRouter(prefix="/dead-letters"',
    '# Our edit: dead letters are for the on-call team.\nrouter = APIRouter(prefix="/dead-letters"',
)


def _target(edit: Edit, root: Path) -> Path:
    return root / edit.path.format(pkg=PKG)


def _apply(edit: Edit, root: Path) -> None:
    path = _target(edit, root)
    if edit.old is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(edit.new.format(pkg=PKG), encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    assert edit.old in text, f"{edit.path}: {edit.old!r} not found"
    path.write_text(text.replace(edit.old, edit.new, 1), encoding="utf-8")


def _extract_release(commit: str, dst: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit], cwd=REPO_ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        unavailable(f"release {OLD} ({commit[:12]}) is not in this clone's history")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dst, filter="data")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("releases") / "taskiq-template"
    repo.mkdir()
    _extract_release(RELEASE_0_1_0, repo)
    git_init(repo, f"release {OLD}")
    git(repo, "tag", OLD)
    for path in repo.iterdir():  # this tree replaces the release whole (deletions included)
        if path.name != ".git":
            subprocess.run(["rm", "-rf", str(path)], check=True)
    snapshot_working_tree(repo)
    commit_all(repo, f"release {NEW}: this working tree")
    git(repo, "tag", NEW)
    return repo


@pytest.fixture(scope="module")
def upgraded(releases: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy(releases, tmp_path_factory.mktemp("upgrade") / PKG, OLD, ANSWERS)
    git_init(project, "generated at 0.1.0")
    for edit in [EDIT_OUTSIDE, *OWN_MODULE, EDIT_INSIDE, OWN_FILE_IN_MOVED]:
        _apply(edit, project)
    commit_all(project, "our work")
    copier_update(project, NEW)
    return project


def test_upgrade_leaves_no_conflicts(upgraded: Path) -> None:
    assert leftovers(upgraded) == []


def test_upgrade_moves_the_old_idle_timeout_default_in_env_to_the_new_one(
    upgraded: Path,
) -> None:
    """0.1.0's .env held the Redis idle timeout's old default; leases made a short one safe.
    Not a tuned setting: the values are the migration's input and output, read from
    copier.yml and the template's settings (the default a new project ships)."""
    env = (upgraded / ".env").read_text(encoding="utf-8").splitlines()
    assert OLD_IDLE not in env
    assert NEW_IDLE in env
    assert any(line.startswith("# taskiq-template migration 0.2.0: ") for line in env)


def test_upgrade_moves_the_platform_out_of_modules(upgraded: Path) -> None:
    package = upgraded / "src" / PKG
    for name in MOVED:
        assert (package / "infrastructure" / name / "__init__.py").is_file(), name
        assert not (package / "modules" / name / "__init__.py").exists(), name
    assert (package / "worker.py").is_file()
    assert (package / "scheduler.py").is_file()
    assert not (package / "infrastructure" / "taskiq" / "worker.py").exists()
    assert not (package / "bench").exists()
    assert (upgraded / "bench" / "__main__.py").is_file()


def test_upgrade_keeps_the_users_module_and_edits(upgraded: Path) -> None:
    for edit in [EDIT_OUTSIDE, *OWN_MODULE]:
        assert edit.new.format(pkg=PKG) in _target(edit, upgraded).read_text(encoding="utf-8")


def test_an_edit_inside_a_moved_file_moves_with_it(upgraded: Path) -> None:
    """Copier alone drops it (the patch names a file that is gone); the 0.2.0 migration
    (extensions/migrations/carry_moved_edits.py) carries it to the file's new place."""
    moved = upgraded / "src" / PKG / "infrastructure" / "dead_letters" / "router.py"
    assert "# Our edit: dead letters are for the on-call team." in moved.read_text("utf-8")
    assert not _target(EDIT_INSIDE, upgraded).exists()
    assert not (upgraded / ".copier-moved-edits").exists()


def test_a_file_of_the_users_own_in_a_moved_folder_moves_along(upgraded: Path) -> None:
    package = upgraded / "src" / PKG
    assert (package / "infrastructure" / "task_status" / "audit.py").read_text("utf-8") == AUDIT
    assert not (package / "modules" / "task_status").exists()


def test_upgraded_project_follows_the_layers_and_finds_every_task(
    upgraded: Path, shared_python: Callable[[str], Path]
) -> None:
    python = shared_python(str(helpers.combos()[0].answers["python_version"]))
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env.update(PYTHONPATH="src", TASKIQ_ENABLED="false", CI="true")
    proc = helpers.run([str(python.with_name("lint-imports")), "--no-cache"], upgraded, env)
    assert proc.returncode == 0, helpers.explain(proc)
    check = (
        f"from {PKG}.worker import TASK_MODULES\n"
        f"assert '{PKG}.modules.reports.tasks' in TASK_MODULES, TASK_MODULES\n"
        f"assert '{PKG}.infrastructure.maintenance.tasks' in TASK_MODULES, TASK_MODULES\n"
    )
    proc = helpers.run([str(python), "-c", check], upgraded, env)
    assert proc.returncode == 0, helpers.explain(proc)
