"""The generated layout: two layers, imports one way, and a README diagram that fits the answers.

`modules/` holds the application's features only; `infrastructure/` holds everything the
template maintains; import-linter's layers contract (the generated pyproject.toml) keeps
`infrastructure` from importing `modules`. The README opens its architecture section with a
mermaid diagram of exactly this combination's processes and stores.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import helpers
import pytest
from conftest import Rendered
from pytest_copie.plugin import Copie

pytestmark = pytest.mark.matrix

COMBOS = helpers.combos()
parametrize_combos = pytest.mark.parametrize("combo", COMBOS, ids=str)

# The application's features a combination may ship; anything else under modules/ would be
# template machinery in the user's layer.
FEATURES = {"notes", "email", "users"}


def lint_imports(project: Path, python: Path) -> helpers.Completed:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PYTHONPATH"] = "src"  # the shared venvs don't install the project
    return helpers.run(
        [str(python.with_name("lint-imports")), "--no-cache"], cwd=project, env=env, timeout=120
    )


@parametrize_combos
def test_imports_go_one_way(rendered: Rendered, shared_python: Callable[[str], Path]) -> None:
    python = shared_python(str(rendered.combo.answers["python_version"]))
    proc = lint_imports(rendered.path, python)
    assert proc.returncode == 0, helpers.explain(proc)
    assert "Entry points -> modules -> infrastructure KEPT" in proc.stdout, proc.stdout


@parametrize_combos
def test_modules_hold_features_only(rendered: Rendered) -> None:
    modules = rendered.package_dir / "modules"
    packages = {p.name for p in modules.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages <= FEATURES, f"template machinery under modules/: {packages - FEATURES}"
    assert "notes" in packages
    assert ("email" in packages) == bool(rendered.combo.answers["include_email"])
    # Nothing under modules/ is imported by the template's platform or holds its machinery.
    for path in (rendered.package_dir / "infrastructure").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert f"{rendered.combo.package}.modules" not in text, f"{path} names modules/"


def test_the_contract_catches_an_import_back(
    copie: Copie, shared_python: Callable[[str], Path]
) -> None:
    """The contract really bites: infrastructure importing a feature fails lint-imports."""
    combo = COMBOS[0]
    result = copie.copy(extra_answers=dict(combo.answers))
    assert result.project_dir is not None, repr(result.exception)
    project = result.project_dir
    deps = project / "src" / combo.package / "infrastructure" / "taskiq" / "deps.py"
    deps.write_text(
        deps.read_text(encoding="utf-8")
        + f"\nfrom {combo.package}.modules.notes import schemas as _schemas  # noqa: F401\n",
        encoding="utf-8",
    )
    proc = lint_imports(project, shared_python(str(combo.answers["python_version"])))
    assert proc.returncode != 0, helpers.explain(proc)
    assert f"{combo.package}.infrastructure is not allowed to import" in proc.stdout
    shutil.rmtree(project)


# ---------------------------------------------------------------------------------------------
# The README's diagram
# ---------------------------------------------------------------------------------------------

NODE = re.compile(r"^\s*(\w+)[\[(]+\"([^\"]*)\"[\])]+\s*$")
EDGE = re.compile(r"^\s*(\w+) -- \"([^\"]*)\" --> (\w+)\s*$")


def diagram(readme: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """The first mermaid block of the architecture section: {node: label}, {(from, to)}."""
    section = readme.split("## Architecture", 1)[1]
    block = section.split("```mermaid", 1)[1].split("```", 1)[0]
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines[0].strip() == "flowchart LR", lines[0]
    for line in lines[1:]:
        if match := NODE.match(line):
            nodes[match[1]] = match[2]
        elif match := EDGE.match(line):
            edges.add((match[1], match[3]))
        else:
            pytest.fail(f"unreadable diagram line: {line!r}")
    return nodes, edges


@parametrize_combos
def test_readme_diagram_names_exactly_this_combination(rendered: Rendered) -> None:
    answers = rendered.combo.answers
    readme = rendered.read("README.md")
    assert readme.index("## Architecture") < readme.index("## Layout")
    nodes, edges = diagram(readme)

    # Expected from the answers themselves, not from derive(): this checks the derivation.
    broker = "redis" if answers["broker"] == "redis" else "rabbitmq"
    uses_redis = answers["broker"] == "redis" or answers["result_backend"] == "redis"
    expected = {"client", "api", "worker", "postgres", broker}
    if uses_redis:
        expected.add("redis")
    if answers["include_scheduler"]:
        expected.add("scheduler")
    if answers["include_email"]:
        expected.add("smtp")
    assert set(nodes) == expected

    assert {("client", "api"), ("api", broker), ("worker", broker)} <= edges
    assert {("api", "postgres"), ("worker", "postgres")} <= edges
    assert (("scheduler", broker) in edges) == bool(answers["include_scheduler"])
    assert (("worker", "smtp") in edges) == bool(answers["include_email"])
    results_shown = "results" in nodes.get("redis", "")
    assert results_shown == (answers["result_backend"] == "redis")
    assert (("worker", "redis") in edges) == uses_redis
    # Task states live in Redis where there is one, else in PostgreSQL.
    states_in = "redis" if uses_redis else "postgres"
    assert "task states" in nodes[states_in]
    if uses_redis:
        assert "task states" not in nodes["postgres"]
