"""Render every answer combination of copier.yml and check the generated project.

The combinations come from copier.yml itself (helpers.combos()); nothing here lists them.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import pytest
import yaml
from conftest import BackgroundRuns, Prepared, Rendered
from helpers import Combo
from ruff.__main__ import find_ruff_bin

pytestmark = pytest.mark.matrix

COMBOS = helpers.combos()
parametrize_combos = pytest.mark.parametrize("combo", COMBOS, ids=str)


# ---------------------------------------------------------------------------------------------
# (a) the render is complete: no template suffix, no Jinja left over
# ---------------------------------------------------------------------------------------------

# Files that legitimately hold template syntax after rendering. Each entry: a glob on the
# project-relative path ({pkg} is the package name), a regex of the legitimate syntax, which is
# removed before looking for leftovers, and why. Keep this list narrow.
ALLOWED_TEMPLATING: list[tuple[str, str, str]] = [
    (".github/workflows/*.yml", r"\$\{\{.*?\}\}", "GitHub Actions ${{ }} expressions"),
    (".github/workflows/*.yaml", r"\$\{\{.*?\}\}", "GitHub Actions ${{ }} expressions"),
    ("migrations/script.py.mako", r"\$\{[^}\n]*\}", "Alembic's Mako revision template"),
    (
        "src/{pkg}/modules/email/templates/*",
        r"(?s)\A.*\Z",
        "Jinja email templates, rendered at run time by the generated service",
    ),
]
LEFTOVER = re.compile(r"\{\{|\{%|\{#")


def _allowed_patterns(rel: str, package: str) -> list[str]:
    return [
        pattern
        for glob, pattern, _why in ALLOWED_TEMPLATING
        if fnmatch.fnmatchcase(rel, glob.format(pkg=package))
    ]


@parametrize_combos
def test_render_is_complete(rendered: Rendered) -> None:
    problems: list[str] = []
    assert rendered.files, "the render produced no files"
    for rel in rendered.files:
        name = rel.as_posix()
        if name.endswith(".jinja") or any(part.endswith(".jinja") for part in rel.parts):
            problems.append(f"{name}: template suffix left in the name")
        if LEFTOVER.search(name):
            problems.append(f"{name}: unrendered Jinja in the path")
        text = helpers.text_of(rendered.path / rel)
        if text is None:
            continue
        for pattern in _allowed_patterns(name, rendered.combo.package):
            text = re.sub(pattern, "", text)
        for lineno, line in enumerate(text.splitlines(), 1):
            if LEFTOVER.search(line):
                problems.append(f"{name}:{lineno}: leftover template syntax: {line.strip()[:120]}")
    assert not problems, "\n".join(problems)


@parametrize_combos
def test_answers_recorded(rendered: Rendered) -> None:
    answers_path = rendered.path / helpers.answers_file_name()
    assert answers_path.is_file(), f"{helpers.answers_file_name()} missing"
    recorded = yaml.safe_load(answers_path.read_text(encoding="utf-8"))
    for name, value in rendered.combo.answers.items():
        assert recorded.get(name) == value, (
            f"{name}: recorded {recorded.get(name)!r}, gave {value!r}"
        )


# ---------------------------------------------------------------------------------------------
# (b) conditional files and imports follow the answers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """`path` exists exactly when `when(context)` holds (context: answers + derive())."""

    key: str  # the question (or derived value) the file follows
    when: Callable[[dict[str, Any]], bool]
    path: str  # project-relative; {pkg} is the package name; a trailing / means a directory

    def __str__(self) -> str:
        return f"{self.key}:{self.path.replace('src/{pkg}/', '').rstrip('/')}"


def _is(name: str, value: Any = True) -> Callable[[dict[str, Any]], bool]:
    return lambda context: context.get(name) == value


def _is_not(name: str, value: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda context: context.get(name) != value


# What each option adds, read off template/ (a file named here that template/ doesn't have
# xfails as PENDING, so a rename shows up instead of passing silently).
CONDITIONAL_PATHS: list[Expect] = [
    Expect("broker", _is("broker", "redis"), "src/{pkg}/infrastructure/taskiq/redis_stream.py"),
    Expect("broker", _is("broker", "redis"), "src/{pkg}/infrastructure/taskiq/leases.py"),
    Expect("broker", _is("broker", "redis"), "tests/integration/test_leases.py"),
    Expect("broker", _is("broker", "rabbitmq"), "src/{pkg}/infrastructure/taskiq/rabbitmq.py"),
    Expect(
        "result_backend",
        _is_not("result_backend", "none"),
        "src/{pkg}/infrastructure/taskiq/results.py",
    ),
    Expect(
        "include_scheduler",
        _is("include_scheduler"),
        "src/{pkg}/scheduler.py",
    ),
    Expect("include_scheduler", _is("include_scheduler"), "src/{pkg}/infrastructure/scheduling/"),
    Expect("include_scheduler", _is("include_scheduler"), "migrations/versions/0002_scheduler.py"),
    Expect("include_email", _is("include_email"), "src/{pkg}/modules/email/"),
    Expect("include_users", _is("include_users"), "src/{pkg}/modules/users/"),
    Expect("include_retry", _is("include_retry"), "src/{pkg}/infrastructure/taskiq/retry.py"),
    Expect("include_retry", _is("include_retry"), "src/{pkg}/infrastructure/dead_letters/"),
    Expect("include_retry", _is("include_retry"), "migrations/versions/0003_retry.py"),
    Expect(
        "workers_load_database_lazily",
        _is("workers_load_database_lazily"),
        "tests/unit/test_worker_imports.py",
    ),
]

_CONDITION = re.compile(r"\{%-?\s*(if|endif)\b[^%]*%\}")


@functools.cache
def _template_paths() -> frozenset[str]:
    """Template paths with their conditions removed, {{ package_name }} as {pkg}, no suffix."""
    root = helpers.subdirectory()
    suffix = helpers.copier_config().get("_templates_suffix", ".jinja")
    paths = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        rel = _CONDITION.sub("", rel)
        rel = re.sub(r"\{\{\s*package_name\s*\}\}", "{pkg}", rel)
        rel = rel.removesuffix(suffix)
        paths.add(rel + ("/" if path.is_dir() else ""))
    return frozenset(paths)


def _in_template(expected: str) -> bool:
    paths = _template_paths()
    return (
        expected in paths
        if not expected.endswith("/")
        else any(p.startswith(expected) for p in paths)
    )


@parametrize_combos
@pytest.mark.parametrize("expect", CONDITIONAL_PATHS, ids=str)
def test_conditional_path(rendered: Rendered, expect: Expect) -> None:
    context = {**rendered.combo.answers, **rendered.combo.derived}
    if expect.key not in helpers.questions() and expect.key not in context:
        pytest.fail(f"CONDITIONAL_PATHS names {expect.key!r}: neither a question nor derived")
    if not _in_template(expect.path):
        pytest.xfail(f"PENDING: no {expect.path} in template/ (CONDITIONAL_PATHS)")
    target = rendered.path / expect.path.format(pkg=rendered.combo.package)
    exists = target.is_dir() if expect.path.endswith("/") else target.is_file()
    wanted = expect.when(context)
    assert exists == wanted, (
        f"{expect.path} {'missing' if wanted else 'present'} with "
        f"{expect.key}={context.get(expect.key)!r}"
    )


# Imports a project may only make when its answers need the library.
FORBIDDEN_IMPORTS: list[tuple[str, Callable[[Combo], bool], tuple[str, ...]]] = [
    ("no Redis", lambda c: not c.derived["needs_redis"], ("redis", "taskiq_redis")),
    ("no RabbitMQ", lambda c: not c.derived["needs_rabbitmq"], ("aio_pika", "taskiq_aio_pika")),
    ("no email", lambda c: not c.answers.get("include_email"), ("aiosmtplib", "aiosmtpd")),
]


@parametrize_combos
def test_no_unneeded_imports(rendered: Rendered) -> None:
    problems = []
    for label, applies, modules in FORBIDDEN_IMPORTS:
        if not applies(rendered.combo):
            continue
        names = "|".join(map(re.escape, modules))
        pattern = re.compile(rf"^\s*(?:from|import)\s+(?:{names})(?:\.|\s|$)", re.MULTILINE)
        for rel in rendered.files:
            if rel.suffix != ".py":
                continue
            text = helpers.text_of(rendered.path / rel) or ""
            for match in pattern.finditer(text):
                problems.append(f"{rel} ({label}): {match.group(0).strip()}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# (c) lint and format with the project's own ruff configuration; (d) it compiles
# ---------------------------------------------------------------------------------------------


@parametrize_combos
@pytest.mark.parametrize(
    "command", [["check"], ["format", "--check", "--diff"]], ids=lambda c: c[0]
)
def test_ruff(rendered: Rendered, command: list[str]) -> None:
    proc = helpers.run(
        [find_ruff_bin(), *command, "--no-cache", "."],
        cwd=rendered.path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, helpers.explain(proc)


@parametrize_combos
def test_compileall(
    rendered: Rendered, shared_python: Callable[[str], Path], tmp_path: Path
) -> None:
    python = shared_python(str(rendered.combo.answers["python_version"]))
    proc = helpers.run(
        [str(python), "-m", "compileall", "-q", "."],
        cwd=rendered.path,
        env={**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")},
    )
    assert proc.returncode == 0, helpers.explain(proc)


# ---------------------------------------------------------------------------------------------
# (e) type check and the generated project's own tests, against the real services
# ---------------------------------------------------------------------------------------------


def _pyproject(rendered: Rendered) -> dict[str, Any]:
    return tomllib.loads((rendered.path / "pyproject.toml").read_text(encoding="utf-8"))


@parametrize_combos
def test_dependencies_match_derive(rendered: Rendered, union_requirements: list[str]) -> None:
    """The generated pyproject declares what derive() says, so the shared venvs hold it all."""
    data = _pyproject(rendered)
    derived = rendered.combo.derived
    declared = list(data.get("project", {}).get("dependencies", []))
    dev = [
        item
        for group in data.get("dependency-groups", {}).values()
        for item in group
        if isinstance(item, str)
    ]
    assert sorted(declared, key=str.lower) == derived["dependencies"]
    in_env = {helpers.normalize_requirement_name(r) for r in union_requirements}
    missing = [r for r in declared + dev if helpers.normalize_requirement_name(r) not in in_env]
    assert not missing, f"not produced by derive(), so not in the shared venvs: {missing}"


@parametrize_combos
def test_mypy(
    rendered: Rendered, background_runs: BackgroundRuns, mypy_run: Callable[[Combo], Prepared]
) -> None:
    """mypy passes with the project's configuration (run one at a time in the background from
    the session's start: conftest.py)."""
    proc = background_runs.result("test_mypy", rendered.combo, mypy_run)
    assert proc.returncode == 0, helpers.explain(proc)


@pytest.mark.parametrize(
    "combo", [combo for combo in COMBOS if combo.id in helpers.unit_tier()], ids=str
)
def test_generated_tests(
    rendered: Rendered,
    background_runs: BackgroundRuns,
    generated_suite: Callable[[Combo], Prepared],
) -> None:
    """The generated project's own suite passes against the real services (CI=true): its unit
    tests in helpers.unit_tier() (any three answers meet in one of those combinations); those
    marked `processes` (they start commands) and its integration tests in
    helpers.integration_tier() (any two answers).

    Suites of the selected combinations run TEMPLATE_MATRIX_JOBS at a time in the background;
    this test waits for its own."""
    proc = background_runs.result("test_generated_tests", rendered.combo, generated_suite)
    assert proc.returncode == 0, helpers.explain(proc)
    assert " SKIPPED" not in proc.stdout, helpers.explain(proc)
    if rendered.combo.id in helpers.integration_tier():
        assert "tests/integration/" in proc.stdout, "no integration test ran"
        assert "::test_imports_follow_the_layers PASSED" in proc.stdout, "no `processes` test ran"
    assert not proc.leftovers, (
        "the generated tests left processes running (killed now):\n" + "\n".join(proc.leftovers)
    )


# ---------------------------------------------------------------------------------------------
# The matrix itself
# ---------------------------------------------------------------------------------------------


def test_integration_tier_covers_every_pair_of_answers() -> None:
    """Any two values of any two questions (python_version too) meet in a combination whose
    integration tests run, and the one closest to copier.yml's defaults is among them."""
    tier = [combo for combo in COMBOS if combo.id in helpers.integration_tier()]
    names = [*helpers.multiplying_questions(), *helpers.ALTERNATING]
    for first, second in itertools.combinations(names, 2):
        wanted = {(c.answers.get(first), c.answers.get(second)) for c in COMBOS}
        met = {(c.answers.get(first), c.answers.get(second)) for c in tier}
        assert wanted == met, f"{first} x {second}: {wanted - met} never run with services"
    defaults = {name: helpers.questions()[name].get("default") for name in names}
    closest = min(COMBOS, key=lambda c: sum(c.answers.get(n) != v for n, v in defaults.items()))
    assert closest in tier


def _masks(strength: int) -> dict[str, int]:
    """Per combination, the bits of the `strength`-answer tuples it holds."""
    names = [*helpers.multiplying_questions(), *helpers.ALTERNATING]
    bits: dict[tuple[object, ...], int] = {}
    masks = {}
    for combo in COMBOS:
        mask = 0
        for answers in helpers.answer_tuples(combo, names, strength):
            mask |= 1 << bits.setdefault(answers, len(bits))
        masks[combo.id] = mask
    return masks


def _no_smaller_cover(tier: frozenset[str], required: set[str], strength: int) -> None:
    masks = _masks(strength)
    wanted = 0
    for mask in masks.values():
        wanted |= mask
    base = 0
    for combo_id in required:
        base |= masks[combo_id]
    others = [masks[combo.id] for combo in COMBOS if combo.id not in required]
    for smaller in itertools.combinations(others, len(tier) - 1 - len(required)):
        covered = base
        for mask in smaller:
            covered |= mask
        assert covered != wanted, f"{len(tier) - 1} combinations cover every {strength} answers"


def test_integration_tier_is_a_smallest_pair_cover() -> None:
    """No set one combination smaller (the closest to the defaults still in it) covers every
    pair: each member of the tier costs a whole suite's run."""
    names = [*helpers.multiplying_questions(), *helpers.ALTERNATING]
    defaults = {name: helpers.questions()[name].get("default") for name in names}
    closest = min(COMBOS, key=lambda c: sum(c.answers.get(n) != v for n, v in defaults.items()))
    _no_smaller_cover(helpers.integration_tier(), {closest.id}, 2)


def test_unit_tier_covers_every_three_answers_with_the_integration_tier_in_it() -> None:
    """Any three values of any three questions meet in a combination whose unit tests run;
    every combination that runs its integration tests runs its unit tests too, and no set
    one smaller holding those covers every three answers."""
    unit, whole = helpers.unit_tier(), helpers.integration_tier()
    assert whole <= unit
    masks = _masks(3)
    wanted = covered = 0
    for combo_id, mask in masks.items():
        wanted |= mask
        if combo_id in unit:
            covered |= mask
    assert covered == wanted, "three answers never meet in a unit-tested combination"
    _no_smaller_cover(unit, set(whole), 3)


def test_matrix_covers_copier_yml() -> None:
    """Every choice of every multiplying question appears, ids are unique, samples are real."""
    axes = helpers.multiplying_questions()
    for name, values in axes.items():
        seen = {c.answers.get(name) for c in COMBOS}
        assert set(values) <= seen, f"{name}: {set(values) - seen} never rendered"
    for name in helpers.ALTERNATING:
        if name in helpers.questions():
            values = helpers.choice_values(helpers.questions()[name])
            assert {c.answers[name] for c in COMBOS} == set(values)
    assert len({c.id for c in COMBOS}) == len(COMBOS)
    unknown = set(helpers.FREE_SAMPLES) - set(helpers.questions())
    assert not unknown, f"FREE_SAMPLES names questions copier.yml doesn't ask: {unknown}"
    for name, values in helpers.FREE_SAMPLES.items():
        used = {repr(c.answers[name]) for c in COMBOS if name in c.answers}
        assert used == {repr(v) for v in values}, f"{name}: samples never used: {values}"
