"""`copier update`: template releases reach a project without losing the user's work.

Everything happens in temporary git repositories, never in this one:

* the template: a snapshot of this working tree (what `git add -A` would commit), committed and
  tagged 999.0.0, then two small releases on top, tagged 999.1.0 and 999.2.0. Tags that high
  are the newest whatever this repository's own tags are. Copying from a dirty local template
  would record a `_commit` that exists nowhere, and every later update would fail.
* a project generated at 999.0.0, committed, then edited like a user would (a task module of
  their own with its test, a changed setting default, an edited README line, a secret in .env).

`copier update` exits 0 even when it leaves conflicts, so every update here is followed by a
search for conflict markers, `.rej` files and unmerged index entries.

The shipped `_migrations` entry carries a real release's version (e.g. 0.1.0), which no update
between the test tags crosses. The snapshot therefore rewrites that one version to 999.1.0
(MIGRATION_VERSION) and keeps the entry's command as shipped, so the test runs the real script
through the real entry, and can tell the crossing step from the others.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import copier
import helpers
import pytest
import yaml
from helpers import REPO_ROOT
from packaging.version import InvalidVersion, Version

pytestmark = pytest.mark.update

V0, V1, V2 = "999.0.0", "999.1.0", "999.2.0"
MIGRATION_SCRIPT = "extensions/migrations/rename_env_vars.py"
DEFAULTS_MIGRATION_SCRIPT = "extensions/migrations/replace_old_defaults.py"
SYNC_ENV_SCRIPT = "extensions/tasks/sync_env.py"
MIGRATION_VERSION = V1

ANSWERS: dict[str, Any] = {
    "project_name": "Update Check",
    "description": "A service that proves template updates keep our work",
}
PKG = "update_check"

# What the two test releases append to template files (RELEASE_1_NEW_FILE: path, new file).
RELEASE_1_README = "\nThis project follows its template with `copier update` (999.1.0).\n"
RELEASE_1_ENV_EXAMPLE = "\n# A comment that 999.1.0 added to .env.example.\n"
RELEASE_1_NEW_FILE = ("docs/operations.md.jinja", "# {{ project_name }}: operations\n")
RELEASE_2_LINE = "\nRunbook entries arrive with 999.2.0.\n"
# 999.1.0 also changes a Python file that the user edited too (a few lines away): the update
# must merge both. (The settings template, the line it goes above, and the line itself.)
SETTINGS_TEMPLATE = "src/{{ package_name }}/infrastructure/config/settings.py.jinja"
RELEASE_1_SETTINGS_ANCHOR = "    taskiq_metrics_port: int"
RELEASE_1_SETTINGS_LINE = "    # Prometheus scrapes this port on every worker host (999.1.0).\n"


# ---------------------------------------------------------------------------------------------
# git, copier and trees
# ---------------------------------------------------------------------------------------------

_GIT_CONFIG = [
    "-c", "user.name=Template Tests",
    "-c", "user.email=template-tests@example.invalid",
    "-c", "commit.gpgsign=false",
    "-c", "tag.gpgsign=false",
    "-c", "init.defaultBranch=main",
    "-c", f"core.hooksPath={os.devnull}",
]  # fmt: skip


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *_GIT_CONFIG, *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"git {' '.join(args)} in {cwd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)


def git_init(repo: Path, message: str) -> None:
    git(repo, "init", "-q")
    commit_all(repo, message)


def snapshot_working_tree(dst: Path) -> None:
    """Copy what `git add -A` would commit here: tracked and untracked, minus ignored files."""
    listed = git(REPO_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in filter(None, listed.split("\0")):
        src = REPO_ROOT / rel
        if not (src.is_file() or src.is_symlink()):  # deleted in the working tree
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


# Plain copier here, not pytest-copie: these render from a snapshot repository at chosen
# refs, and `copie.update()` takes no `conflict="inline"` and passes answers as defaults, which
# never override the recorded answers that an update test changes with `data`.
def copy(template: Path, dst: Path, vcs_ref: str, answers: dict[str, Any]) -> Path:
    copier.run_copy(
        str(template),
        str(dst),
        data=dict(answers),
        defaults=True,
        unsafe=True,
        vcs_ref=vcs_ref,
        quiet=True,
    )
    return dst


def update(project: Path, vcs_ref: str, **data: Any) -> None:
    """`copier update --defaults --conflict inline [--data k=v ...]` to `vcs_ref`."""
    copier.run_update(
        str(project),
        data=data,
        defaults=True,
        overwrite=True,
        unsafe=True,
        conflict="inline",
        vcs_ref=vcs_ref,
        quiet=True,
    )


def clone_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def recorded_answers(project: Path) -> dict[str, Any]:
    text = (project / helpers.answers_file_name()).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def tree(project: Path) -> dict[str, bytes]:
    """The files git would see (tracked or not, ignored ones excluded), answers minus _commit.

    Ignored files are the user's (.env) or caches; .env is compared on its own.
    """
    if not (project / ".git").exists():
        git(project, "init", "-q")
    listed = git(project, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    files = {}
    for rel in sorted(filter(None, listed.split("\0"))):
        path = project / rel
        if not path.exists():
            continue
        if rel == helpers.answers_file_name():
            answers = {k: v for k, v in recorded_answers(project).items() if k != "_commit"}
            files[rel] = yaml.safe_dump(answers, sort_keys=True).encode()
        else:
            files[rel] = path.read_bytes()
    return files


def tree_differences(actual: dict[str, bytes], expected: dict[str, bytes]) -> list[str]:
    problems = [f"missing: {rel}" for rel in sorted(expected.keys() - actual.keys())]
    problems += [f"unexpected: {rel}" for rel in sorted(actual.keys() - expected.keys())]
    for rel in sorted(expected.keys() & actual.keys()):
        if actual[rel] != expected[rel]:
            problems.append(f"differs: {rel}\n{_diff(expected[rel], actual[rel], rel)}")
    return problems


def _diff(expected: bytes, actual: bytes, name: str) -> str:
    lines = difflib.unified_diff(
        expected.decode(errors="replace").splitlines(),
        actual.decode(errors="replace").splitlines(),
        f"expected/{name}",
        f"updated/{name}",
        lineterm="",
    )
    return "\n".join(list(lines)[:60])


_MARKER = re.compile(rb"^(?:<{7}|>{7})(?: |$)", re.MULTILINE)


def leftovers(project: Path) -> list[str]:
    """What a conflicted `copier update` leaves behind (it still exits 0)."""
    problems = []
    for path in project.rglob("*"):
        rel = path.relative_to(project)
        if rel.parts[0] == ".git" or not path.is_file():
            continue
        if path.suffix in {".rej", ".orig"}:
            problems.append(f"{rel}: rejected hunks")
        elif _MARKER.search(path.read_bytes()):
            problems.append(f"{rel}: conflict markers")
    unmerged = git(project, "ls-files", "--unmerged").strip()
    if unmerged:
        problems.append(f"unmerged index entries:\n{unmerged}")
    return sorted(problems)


# ---------------------------------------------------------------------------------------------
# The user's edits
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """Replace `old` (exactly once) with `new` in `path`, or create `path` when old is None."""

    path: str  # project-relative; {pkg} is the package name
    old: str | None
    new: str

    def target(self, root: Path) -> Path:
        return root / self.path.format(pkg=PKG)

    def apply(self, root: Path) -> None:
        path = self.target(root)
        if self.old is None:
            assert not path.exists(), f"{self.path} already exists"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.new.format(pkg=PKG), encoding="utf-8")
            return
        text = path.read_text(encoding="utf-8")
        assert text.count(self.old) == 1, f"{self.path}: {self.old!r} is not there exactly once"
        path.write_text(text.replace(self.old, self.new), encoding="utf-8")

    def survived(self, root: Path) -> bool:
        path = self.target(root)
        return path.is_file() and self.new.format(pkg=PKG) in path.read_text(encoding="utf-8")


REPORTS_TASKS = '''\
"""Reports: a feature of our own, next to the template's."""

from {pkg}.infrastructure.taskiq.registry import register_task


@register_task("reports:count_words")
async def count_words(text: str) -> int:
    return len(text.split())
'''

REPORTS_TEST = '''\
"""Our own task is found by the worker and runs on the broker like the template's."""

from httpx import AsyncClient

from {pkg}.infrastructure.taskiq.registry import task_registry
from {pkg}.worker import TASK_MODULES
from {pkg}.modules.reports.tasks import count_words


async def test_reports_task_is_registered_and_runs(client: AsyncClient) -> None:
    assert "{pkg}.modules.reports.tasks" in TASK_MODULES
    assert task_registry["reports:count_words"] is count_words
    task = await count_words.kiq("one two three")
    result = await task.wait_result(timeout=10)
    assert result.return_value == 3
'''

USER_EDITS = [
    Edit("src/{pkg}/modules/reports/__init__.py", None, ""),
    Edit("src/{pkg}/modules/reports/tasks.py", None, REPORTS_TASKS),
    Edit("tests/unit/test_reports.py", None, REPORTS_TEST),
    Edit(
        "src/{pkg}/infrastructure/config/settings.py",
        "taskiq_worker_concurrency: int = Field(default=2,",
        "taskiq_worker_concurrency: int = Field(default=4,",
    ),
    Edit(".env.example", "\nTASKIQ_WORKER_CONCURRENCY=2\n", "\nTASKIQ_WORKER_CONCURRENCY=4\n"),
    Edit(
        "README.md",
        f"\n{ANSWERS['description']}\n",
        "\nOur reports service: counts words, and never loses a note.\n",
    ),
]
# .env is ignored by git and never overwritten by copier (_skip_if_exists): the user's own.
USER_ENV_LINES = "\n# Ours: copier must never touch this file.\nREPORTS_API_TOKEN=s3cret\n"


def apply_user_edits(project: Path) -> None:
    for edit in USER_EDITS:
        edit.apply(project)
    with (project / ".env").open("a", encoding="utf-8") as fh:
        fh.write(USER_ENV_LINES)


# ---------------------------------------------------------------------------------------------
# The template repository with three releases, and the user's project
# ---------------------------------------------------------------------------------------------


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def pin_migration_version(copier_yml: Path, version: str, script: str = MIGRATION_SCRIPT) -> None:
    """Give the shipped migration entry running `script` a test version (its own `version:`
    line: several entries may share a release's version)."""
    config = yaml.safe_load(copier_yml.read_text(encoding="utf-8"))
    shipped = [
        entry["version"]
        for entry in config.get("_migrations", [])
        if isinstance(entry, dict) and script in " ".join(map(str, entry["command"]))
    ]
    assert len(shipped) == 1, f"expected one _migrations entry running {script}"
    lines = copier_yml.read_text(encoding="utf-8").splitlines(keepends=True)
    command_line = next(i for i, line in enumerate(lines) if script in line)
    pattern = re.compile(rf"""^(\s*-?\s*version:\s*)["']?{re.escape(str(shipped[0]))}["']?\s*$""")
    version_line = next(i for i in range(command_line, -1, -1) if pattern.match(lines[i]))
    lines[version_line] = pattern.sub(rf'\g<1>"{version}"', lines[version_line]) + "\n"
    copier_yml.write_text("".join(lines), encoding="utf-8")


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("template") / "taskiq-template"
    snapshot_working_tree(repo)
    pin_migration_version(repo / "copier.yml", MIGRATION_VERSION)
    pin_migration_version(repo / "copier.yml", MIGRATION_VERSION, DEFAULTS_MIGRATION_SCRIPT)
    git_init(repo, "snapshot of the working tree")
    git(repo, "tag", V0)

    sub = helpers.copier_config().get("_subdirectory", "")
    _append(repo / sub / "README.md.jinja", RELEASE_1_README)
    _append(repo / sub / ".env.example.jinja", RELEASE_1_ENV_EXAMPLE)
    _append(repo / sub / RELEASE_1_NEW_FILE[0], RELEASE_1_NEW_FILE[1])
    settings = repo / sub / SETTINGS_TEMPLATE
    text = settings.read_text(encoding="utf-8")
    assert text.count(RELEASE_1_SETTINGS_ANCHOR) == 1, (
        f"{SETTINGS_TEMPLATE} changed: update this test"
    )
    settings.write_text(
        text.replace(
            RELEASE_1_SETTINGS_ANCHOR, RELEASE_1_SETTINGS_LINE + RELEASE_1_SETTINGS_ANCHOR
        ),
        encoding="utf-8",
    )
    commit_all(repo, "release 999.1.0")
    git(repo, "tag", "-a", V1, "-m", V1)  # annotated and lightweight tags both work

    _append(repo / sub / RELEASE_1_NEW_FILE[0], RELEASE_2_LINE)
    commit_all(repo, "release 999.2.0")
    git(repo, "tag", V2)
    return repo


@pytest.fixture(scope="module")
def project_v0(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated at 999.0.0, committed, then edited and committed by the user."""
    project = copy(template_repo, tmp_path_factory.mktemp("v0") / "project", V0, ANSWERS)
    git_init(project, "generated at 999.0.0")
    apply_user_edits(project)
    commit_all(project, "our work")
    return project


@dataclass(frozen=True)
class Updated:
    path: Path
    leftovers: list[str]
    env_before: str
    suite: Future[helpers.Completed] | None  # its whole suite, started with the update


@pytest.fixture(scope="module")
def updated(
    project_v0: Path,
    tmp_path_factory: pytest.TempPathFactory,
    suite_command: Callable[..., SuiteCommand],
) -> Iterator[Updated]:
    """project_v0 after `copier update` to 999.1.0 (then committed, as a user would). Its
    whole suite starts at once in the background, while the other update checks run."""
    project = clone_project(project_v0, tmp_path_factory.mktemp("v1") / "project")
    env_before = (project / ".env").read_text(encoding="utf-8")
    update(project, V1)
    found = leftovers(project)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="updated") as pool:
        suite = None
        if not found:
            commit_all(project, "update to 999.1.0")
            command = suite_command(project)
            suite = pool.submit(helpers.run, *command, kind="update: project suites")
        yield Updated(project, found, env_before, suite)


@pytest.fixture(scope="module")
def fresh_v1_with_edits(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = copy(template_repo, tmp_path_factory.mktemp("fresh") / "project", V1, ANSWERS)
    git_init(project, "generated at 999.1.0")
    apply_user_edits(project)
    return project


SuiteCommand = tuple[list[str], Path, dict[str, str], float]  # helpers.run's arguments


@pytest.fixture(scope="module")
def suite_command(
    shared_python: Callable[[str], Path],
    require_services: Callable[[Iterable[str]], None],
) -> Callable[..., SuiteCommand]:
    """How to run a project's whole test suite (CI=true) in the harness's shared venv."""

    def command(project: Path) -> SuiteCommand:
        answers = {k: v for k, v in recorded_answers(project).items() if not k.startswith("_")}
        combo = helpers.Combo(id="update", index=0, answers=answers)
        require_services(combo.derived["services"])
        python = shared_python(str(answers["python_version"]))
        argv = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        return argv, project, helpers.generated_test_env(combo), helpers.GENERATED_TESTS_TIMEOUT

    return command


def assert_suite_passed(proc: helpers.Completed) -> None:
    assert proc.returncode == 0, helpers.explain(proc)
    assert not proc.leftovers, "the suite left processes running:\n" + "\n".join(proc.leftovers)


# ---------------------------------------------------------------------------------------------
# Update to the next release
# ---------------------------------------------------------------------------------------------


def test_update_leaves_no_conflicts(updated: Updated) -> None:
    assert not updated.leftovers, "copier update left conflicts:\n" + "\n".join(updated.leftovers)
    assert recorded_answers(updated.path)["_commit"] == V1


def test_update_brings_the_template_change(updated: Updated) -> None:
    readme = (updated.path / "README.md").read_text(encoding="utf-8")
    assert RELEASE_1_README.strip() in readme
    new_file = updated.path / RELEASE_1_NEW_FILE[0].removesuffix(".jinja")
    assert new_file.read_text(encoding="utf-8") == f"# {ANSWERS['project_name']}: operations\n"
    assert RELEASE_1_ENV_EXAMPLE.strip() in (updated.path / ".env.example").read_text()
    settings = updated.path / f"src/{PKG}/infrastructure/config/settings.py"
    assert RELEASE_1_SETTINGS_LINE in settings.read_text(encoding="utf-8")


def test_update_keeps_the_users_edits(updated: Updated) -> None:
    lost = [edit.path for edit in USER_EDITS if not edit.survived(updated.path)]
    assert not lost, f"lost in the update: {lost}"


def test_update_keeps_the_users_env(updated: Updated, fresh_v1_with_edits: Path) -> None:
    """_skip_if_exists: [.env] keeps it byte for byte, though a fresh .env would now differ."""
    assert (updated.path / ".env").read_text(encoding="utf-8") == updated.env_before
    fresh_env = (fresh_v1_with_edits / ".env").read_text(encoding="utf-8")
    assert RELEASE_1_ENV_EXAMPLE.strip() in fresh_env, "the test release must change .env"


def test_update_equals_a_fresh_copy_plus_the_users_edits(
    updated: Updated, fresh_v1_with_edits: Path
) -> None:
    problems = tree_differences(tree(updated.path), tree(fresh_v1_with_edits))
    assert not problems, "\n".join(problems)


def test_update_keeps_the_operator_token(updated: Updated) -> None:
    before = re.search(r"(?m)^OPERATOR_TOKEN=(.+)$", updated.env_before)
    assert before, "a copy writes a token into .env"
    assert f"OPERATOR_TOKEN={before[1]}" in (updated.path / ".env").read_text(encoding="utf-8")


def test_update_adds_a_token_to_an_env_without_one(project_v0: Path, tmp_path: Path) -> None:
    """A project made before the token existed: its .env has none, the update writes one."""
    project = clone_project(project_v0, tmp_path / "project")
    env = project / ".env"
    without = re.sub(r"(?m)^OPERATOR_TOKEN=.*\n", "", env.read_text(encoding="utf-8"))
    env.write_text(without, encoding="utf-8")

    update(project, V1)

    after = env.read_text(encoding="utf-8")
    [token] = re.findall(r"(?m)^OPERATOR_TOKEN=(.+)$", after)
    assert len(token) >= 40
    assert after.startswith(without), "the rest of .env is kept as it was"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_conflicts_are_found_although_update_exits_0(project_v0: Path, tmp_path: Path) -> None:
    """The check above has teeth: an edit that collides with the release is reported."""
    project = clone_project(project_v0, tmp_path / "project")
    _append(project / "README.md", "\nMaintained by the reports team.\n")
    commit_all(project, "a README line where the template adds one too")
    update(project, V1)  # returns normally: no exception, no exit code
    assert any(item.startswith("README.md") for item in leftovers(project)), leftovers(project)


# ---------------------------------------------------------------------------------------------
# Changing answers during an update, and back
# ---------------------------------------------------------------------------------------------


def _answer_changes() -> list[Any]:
    """Each multiplying question of copier.yml set away from its default (a new one is
    picked up here without edits)."""
    params = []
    for name, values in helpers.multiplying_questions().items():
        default = helpers.questions()[name].get("default")
        for value in values:
            if value != default:
                params.append(pytest.param(name, value, id=f"{name}={value}"))
    return params


def _env_with_broker(env: str, broker: str) -> str:
    return re.sub(r"(?m)^TASKIQ_BROKER_TYPE=.*$", f"TASKIQ_BROKER_TYPE={broker}", env)


@dataclass
class AnswerChange:
    """The user's project updated with one answer changed, and its suite's run."""

    project: Path
    answers_before: dict[str, Any]
    tree_before: dict[str, bytes]
    env_before: str
    leftovers: list[str]  # conflicts the update left
    differences: list[str]  # from a fresh copy with the new answer plus the user's edits


@pytest.fixture(scope="module")
def answer_changes(
    request: pytest.FixtureRequest,
    updated: Updated,
    template_repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, Any], AnswerChange]:
    """Every selected answer change, updated at once. No suite runs here: each changed project
    must equal a fresh copy with that answer plus the user's edits, file for file; such a
    combination's own tests run in the matrix, and the edits' in the updated project's suite."""
    assert not updated.leftovers
    wanted = [
        (item.callspec.params["question"], item.callspec.params["value"])
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_changing_an_answer_and_back"
    ]
    changes: dict[tuple[str, Any], AnswerChange] = {}
    for question, value in wanted:
        root = tmp_path_factory.mktemp(f"{question}-{value}")
        project = clone_project(updated.path, root / "project")
        change = AnswerChange(
            project=project,
            answers_before=recorded_answers(project),
            tree_before=tree(project),
            env_before=(project / ".env").read_text(encoding="utf-8"),
            leftovers=[],
            differences=[],
        )
        changes[(question, value)] = change
        update(project, V1, **{question: value})
        change.leftovers = leftovers(project)
        if change.leftovers:
            continue
        answers = {k: v for k, v in change.answers_before.items() if k[0] != "_"}
        fresh = copy(template_repo, root / "fresh", V1, {**answers, question: value})
        git_init(fresh, "fresh")
        apply_user_edits(fresh)
        change.differences = tree_differences(tree(project), tree(fresh))
    return changes


@pytest.mark.parametrize(("question", "value"), _answer_changes())
def test_changing_an_answer_and_back(
    question: str,
    value: Any,
    answer_changes: dict[tuple[str, Any], AnswerChange],
) -> None:
    """`copier update --data <question>=<value>` gives what a fresh copy with that answer plus
    the user's edits gives, and updating back restores the project file for file."""
    change = answer_changes[(question, value)]
    project = change.project
    assert not change.leftovers, "\n".join(change.leftovers)
    assert recorded_answers(project)[question] == value
    assert not change.differences, "\n".join(change.differences)
    # The user's .env is kept, except the broker it names (the sync_env task).
    broker = recorded_answers(project)["broker"]
    env = change.env_before
    assert (project / ".env").read_text(encoding="utf-8") == _env_with_broker(env, broker)

    commit_all(project, f"{question}={value}")
    update(project, V1, **{question: change.answers_before[question]})
    assert not (found := leftovers(project)), "\n".join(found)
    problems = tree_differences(tree(project), change.tree_before)
    assert not problems, "updating back did not restore the project:\n" + "\n".join(problems)
    assert (project / ".env").read_text(encoding="utf-8") == env


# ---------------------------------------------------------------------------------------------
# The shipped migration: runs once, on the update that crosses its version
# ---------------------------------------------------------------------------------------------

LEGACY = ("TASKIQ_WORKERS", "TASKIQ_WORKER_CONCURRENCY")


def _use_legacy_name(env_file: Path, value: int) -> None:
    """A .env that sets the worker count under the legacy name only."""
    text = env_file.read_text(encoding="utf-8")
    text, count = re.subn(rf"(?m)^{LEGACY[1]}=.*$", f"{LEGACY[0]}={value}", text)
    assert count == 1, f"{LEGACY[1]} not set once in {env_file}"
    env_file.write_text(text, encoding="utf-8")


# Not tuned settings: these tests are about the 0.2.0 migration that rewrites the Redis idle
# timeout's old default in a user's .env to the new one, and nothing runs with either value
# here. Both are read from copier.yml's migration entry (what `copier update` really passes).
IDLE_VARIABLE, OLD_IDLE_SECONDS, MIGRATED_IDLE_SECONDS = helpers.default_migration(
    DEFAULTS_MIGRATION_SCRIPT
)
OLD_IDLE = f"{IDLE_VARIABLE}={OLD_IDLE_SECONDS}"
# The default a new project ships, read from the template's settings (never typed again here).
SHIPPED_IDLE_SECONDS = helpers.shipped_setting_default("taskiq_redis_idle_timeout_seconds")
NEW_IDLE = f"{IDLE_VARIABLE}={SHIPPED_IDLE_SECONDS}"


def test_the_idle_timeout_migration_moves_env_to_the_default_a_new_project_ships() -> None:
    assert IDLE_VARIABLE == "TASKIQ_REDIS_IDLE_TIMEOUT_SECONDS"
    assert MIGRATED_IDLE_SECONDS == SHIPPED_IDLE_SECONDS


def _use_old_idle_default(env_file: Path) -> None:
    """A .env copied from an older .env.example: the Redis idle timeout's old default."""
    text = env_file.read_text(encoding="utf-8")
    # The migration's input (see OLD_IDLE): nothing runs with this value.
    text, count = re.subn(rf"(?m)^{IDLE_VARIABLE}=.*$", OLD_IDLE, text)
    if count == 0:  # a RabbitMQ project has none; the script doesn't care
        text += f"{OLD_IDLE}\n"
    env_file.write_text(text, encoding="utf-8")


def _migration_runs(output: str) -> int:
    return sum(
        line.startswith(f"taskiq-template migration {MIGRATION_VERSION}:")
        for line in output.splitlines()
    )


@pytest.mark.parametrize(
    ("start", "steps"),
    [
        pytest.param(V0, [(V1, True), (V2, False)], id="crosses-then-later-update"),
        pytest.param(V0, [(V2, True)], id="crosses-by-skipping-a-release"),
        pytest.param(V1, [(V2, False)], id="starts-at-its-version"),
    ],
)
def test_migration_runs_once_on_the_update_that_crosses_its_version(
    start: str,
    steps: list[tuple[str, bool]],
    template_repo: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    project = copy(template_repo, tmp_path / "project", start, ANSWERS)
    git_init(project, f"generated at {start}")
    env_file = project / ".env"
    for target, crosses in steps:
        _use_legacy_name(env_file, 5)
        _use_old_idle_default(env_file)
        before = env_file.read_text(encoding="utf-8")
        capfd.readouterr()
        update(project, target)
        out, err = capfd.readouterr()
        runs = _migration_runs(out + err)
        after = env_file.read_text(encoding="utf-8")
        assert not (found := leftovers(project)), "\n".join(found)
        if crosses:
            assert runs == 1, f"{start} -> {target}: ran {runs} times\n{out}\n{err}"
            assert re.search(rf"(?m)^{LEGACY[1]}=5$", after), after
            assert not re.search(rf"(?m)^{LEGACY[0]}=", after), after
            # The old default moved to the new one (a value of the user's would have stayed).
            assert re.search(rf"(?m)^{NEW_IDLE}$", after), after
            assert not re.search(rf"(?m)^{OLD_IDLE}$", after), after
        else:
            assert runs == 0, f"{start} -> {target}: ran {runs} times\n{out}\n{err}"
            assert after == before
        commit_all(project, f"update to {target}")


# ---------------------------------------------------------------------------------------------
# The scripts on their own, and the release bookkeeping
# ---------------------------------------------------------------------------------------------


def _load(rel: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO_ROOT / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rename_env_vars_is_idempotent_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rename = _load(MIGRATION_SCRIPT)
    env = tmp_path / ".env"
    env.write_text(
        "# a comment naming TASKIQ_WORKERS=1\r\n"
        "export TASKIQ_WORKERS = 'four=4'\r\n"
        "TASKIQ_MAX_ASYNC_TASKS=9\r\n"
        "TASKIQ_MAX_TASKS_PER_WORKER=50\r\n"
        "OTHER=1",
        encoding="utf-8",
    )
    env.chmod(0o600)
    renames = [
        "TASKIQ_WORKERS=TASKIQ_WORKER_CONCURRENCY",
        "TASKIQ_MAX_ASYNC_TASKS=TASKIQ_MAX_TASKS_PER_WORKER",
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VERSION_CURRENT", raising=False)
    assert rename.main(renames) == 0
    once = env.read_bytes().decode()
    assert rename.main(renames) == 0
    assert env.read_bytes().decode() == once
    assert once == (
        "# a comment naming TASKIQ_WORKERS=1\r\n"
        "export TASKIQ_WORKER_CONCURRENCY = 'four=4'\r\n"
        "# TASKIQ_MAX_ASYNC_TASKS=9  # taskiq-template migration: "
        "TASKIQ_MAX_TASKS_PER_WORKER is already set\r\n"
        "TASKIQ_MAX_TASKS_PER_WORKER=50\r\n"
        "OTHER=1"
    )
    assert env.stat().st_mode & 0o777 == 0o600


def test_replace_old_defaults_changes_only_the_old_default_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace = _load(DEFAULTS_MIGRATION_SCRIPT)
    env = tmp_path / ".env"
    # The migration's input, not a setting anything runs with (see OLD_IDLE).
    original = (
        f"# {OLD_IDLE} in a comment stays\r\n"
        f"export {IDLE_VARIABLE} = '{OLD_IDLE_SECONDS}.0'\r\n"
        f"OTHER={OLD_IDLE_SECONDS}"
    )
    env.write_text(original, encoding="utf-8")
    env.chmod(0o600)
    # The migration's own argument as copier.yml passes it (see OLD_IDLE), not a setting.
    change = [f"{OLD_IDLE}={MIGRATED_IDLE_SECONDS}"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VERSION_CURRENT", "0.2.0")
    assert replace.main(change) == 0
    once = env.read_bytes().decode()
    assert replace.main(change) == 0
    assert env.read_bytes().decode() == once
    # The migration's expected output (see OLD_IDLE), not a setting anything runs with.
    assert once == (
        f"# {OLD_IDLE} in a comment stays\r\n"
        f"# taskiq-template migration 0.2.0: {IDLE_VARIABLE} was {OLD_IDLE_SECONDS}, "
        f"the old default; the new default is {MIGRATED_IDLE_SECONDS}.\r\n"
        f"export {IDLE_VARIABLE} = {MIGRATED_IDLE_SECONDS}\r\n"
        f"OTHER={OLD_IDLE_SECONDS}"
    )
    assert env.stat().st_mode & 0o777 == 0o600
    # A value the user chose is theirs: any value but the old default (migration input again,
    # nothing runs with it).
    chosen = f"{IDLE_VARIABLE}={int(OLD_IDLE_SECONDS) + 300}\n"
    env.write_text(chosen, encoding="utf-8")
    assert replace.main(change) == 0
    assert env.read_text(encoding="utf-8") == chosen


@pytest.mark.parametrize(
    ("line", "broker", "expected"),
    [
        ("TASKIQ_BROKER_TYPE=redis\n", "rabbitmq", "TASKIQ_BROKER_TYPE=rabbitmq\n"),
        ('taskiq_broker_type = "redis"\n', "rabbitmq", "taskiq_broker_type = rabbitmq\n"),
        ("TASKIQ_BROKER_TYPE=memory\n", "rabbitmq", "TASKIQ_BROKER_TYPE=memory\n"),
        ("TASKIQ_BROKER_TYPE=rabbitmq\n", "rabbitmq", "TASKIQ_BROKER_TYPE=rabbitmq\n"),
        ("# TASKIQ_BROKER_TYPE=redis\n", "rabbitmq", "# TASKIQ_BROKER_TYPE=redis\n"),
    ],
)
def test_sync_env_points_env_at_the_answered_broker(line: str, broker: str, expected: str) -> None:
    sync = _load(SYNC_ENV_SCRIPT)
    text, _ = sync.sync_broker(f"A=1\n{line}B=2\n", broker)
    assert text == f"A=1\n{expected}B=2\n"
    assert sync.sync_broker(text, broker) == (text, [])


def test_migrations_are_well_formed() -> None:
    """PEP 440 versions, a stage condition, and scripts that exist in the template repo."""
    migrations = helpers.copier_config().get("_migrations", [])
    assert migrations, "copier.yml ships no _migrations entry"
    for entry in migrations:
        Version(str(entry["version"]))
        assert "_stage" in entry.get("when", ""), entry
        for part in map(str, entry["command"]):
            if "_copier_conf.src_path" in part:
                rel = part.split("}}", 1)[1].lstrip("/")
                assert (REPO_ROOT / rel).is_file(), f"{rel} (from {part}) is missing"


def test_release_tags_are_pep440_and_in_the_changelog() -> None:
    """Releases are PEP 440 tags, and CHANGELOG.md has a section for each one."""
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(r"(?m)^## Unreleased\s*$", changelog), "CHANGELOG.md needs '## Unreleased'"
    tags = git(REPO_ROOT, "tag", "--list").split()
    problems = []
    for tag in tags:
        try:
            Version(tag)
        except InvalidVersion:
            problems.append(f"tag {tag!r} is not a PEP 440 version: copier ignores it")
            continue
        if not re.search(rf"(?m)^## \[?{re.escape(tag)}\]?(\s|$)", changelog):
            problems.append(f"tag {tag} has no '## {tag}' section in CHANGELOG.md")
    assert not problems, "\n".join(problems)


# Last in the module: its suite started with the update and ran meanwhile.
def test_updated_project_passes_its_tests(updated: Updated) -> None:
    assert not updated.leftovers
    assert updated.suite is not None
    assert_suite_passed(updated.suite.result())
