"""Shared machinery of the template's test harness.

Everything here is derived from the template's own files (copier.yml, extensions/context.py),
so a question or a dependency added there reaches the tests without editing this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import copier
import jinja2
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COPIER_YML = REPO_ROOT / "copier.yml"
CONTEXT_PY = REPO_ROOT / "extensions" / "context.py"
CACHE_DIR = REPO_ROOT / ".cache"

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}

# ---------------------------------------------------------------------------------------------
# copier.yml and extensions/context.py
# ---------------------------------------------------------------------------------------------


@cache
def copier_config() -> dict[str, Any]:
    with COPIER_YML.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def questions() -> dict[str, dict[str, Any]]:
    """The questions of copier.yml, in file order (settings start with an underscore)."""
    return {
        name: (spec if isinstance(spec, dict) else {"default": spec})
        for name, spec in copier_config().items()
        if not name.startswith("_")
    }


def subdirectory() -> Path:
    return REPO_ROOT / copier_config().get("_subdirectory", "")


def shipped_setting_default(field: str) -> str:
    """The default a new project ships for the settings field `field`, as written in the
    template's settings (tests read it here instead of typing the value again)."""
    settings = subdirectory() / "src" / "{{ package_name }}" / "infrastructure" / "config"
    text = (settings / "settings.py.jinja").read_text(encoding="utf-8")
    match = re.search(rf"(?m)^\s+{re.escape(field)}: [^=]+= Field\(\s*default=([^,)\s]+)", text)
    assert match is not None, f"no Field(default=...) for {field} in settings.py.jinja"
    return match.group(1)


def default_migration(script: str) -> tuple[str, str, str]:
    """(variable, old default, new default) that copier.yml's `_migrations` entry running
    `script` (replace_old_defaults.py) passes it, from its `VARIABLE=OLD=NEW` argument."""
    for migration in copier_config().get("_migrations", []):
        command = migration.get("command", []) if isinstance(migration, dict) else []
        if any(str(part).endswith(script) for part in command):
            variable, old, new = str(command[-1]).split("=")
            return variable, old, new
    raise AssertionError(f"copier.yml runs no migration {script}")


def answers_file_name() -> str:
    return copier_config().get("_answers_file", ".copier-answers.yml")


@cache
def context_module() -> ModuleType:
    """extensions/context.py, imported by file path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("_template_context", CONTEXT_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def derive(answers: Mapping[str, Any]) -> dict[str, Any]:
    return context_module().derive(dict(answers))


def choice_values(spec: Mapping[str, Any]) -> list[Any]:
    """The values of a question's choices (list, {label: value} or {label: {value: ...}})."""
    if spec.get("type") == "bool":
        return [True, False]
    choices = spec["choices"]
    items = choices.values() if isinstance(choices, dict) else choices
    return [item["value"] if isinstance(item, dict) else item for item in items]


_FALSY = {"", "false", "no", "n", "off", "0", "none", "null", "~"}


def _jinja_env() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.ChainableUndefined)
    env.filters.update({name: getattr(context_module(), name) for name in _CONTEXT_FILTERS})
    return env


_CONTEXT_FILTERS = (
    "slugify",
    "is_valid_slug",
    "is_valid_identifier",
    "is_reserved_name",
    "is_valid_email",
)


def is_asked(spec: Mapping[str, Any], answers: Mapping[str, Any]) -> bool:
    """Evaluate a question's ``when`` against the answers so far plus the derived context."""
    when = spec.get("when", True)
    if isinstance(when, bool):
        return when
    context = {**answers, **derive(answers)}
    rendered = _jinja_env().from_string(str(when)).render(**context)
    return rendered.strip().lower() not in _FALSY


# ---------------------------------------------------------------------------------------------
# The answer matrix
# ---------------------------------------------------------------------------------------------

# Questions that don't multiply the matrix but alternate across it.
ALTERNATING = ("python_version",)

# Free answers are sampled: each combination takes one value of each list, deterministically.
# Keys must be questions of copier.yml (test_validation checks it). Every value must be valid.
FREE_SAMPLES: dict[str, list[Any]] = {
    "project_name": ["Order Pipeline", "acme billing API", "Data Sync 2", "Payment Events Relay"],
    "description": [
        "Handles the team's background jobs",
        "Order intake with Taskiq workers",
        "A FastAPI service with Taskiq background workers",
    ],
    "author_name": ["Zoë Müller", "Jane Doe", "O. Example"],
    "author_email": ["zoe.muller@example.org", "jane@example.com"],
    "redis_db": [0, 3, 7, 15],
}

# Short id parts: {question: prefix}; bools read "<word>"/"no<word>".
_ID_WORDS = {
    "broker": "",
    "result_backend": "rb",
    "include_scheduler": "sched",
    "include_email": "email",
    "include_retry": "retry",
}


def _id_part(name: str, value: Any) -> str:
    word = _ID_WORDS.get(name)
    if isinstance(value, bool):
        word = word if word is not None else name.removeprefix("include_")
        return word if value else f"no{word}"
    if word is None:
        word = "".join(part[0] for part in name.split("_"))
    return f"{word}{value}"


@dataclass(frozen=True)
class Combo:
    """One answer combination: the answers passed to copier and a readable id."""

    id: str
    index: int
    answers: dict[str, Any] = field(hash=False, compare=False)

    @property
    def derived(self) -> dict[str, Any]:
        return derive(self.answers)

    @property
    def package(self) -> str:
        """The package name copier will compute (default of package_name)."""
        return self.answers.get("package_name") or context_module().slugify(
            self.answers["project_name"]
        ).replace("-", "_")

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"Combo({self.id})"


def multiplying_questions() -> dict[str, list[Any]]:
    return {
        name: choice_values(spec)
        for name, spec in questions().items()
        if name not in ALTERNATING and ("choices" in spec or spec.get("type") == "bool")
    }


@cache
def combos() -> tuple[Combo, ...]:
    qs = questions()
    axes = multiplying_questions()
    alternating = {name: choice_values(qs[name]) for name in ALTERNATING if name in qs}
    free = [
        name
        for name, spec in qs.items()
        if name not in axes and name not in alternating and name in FREE_SAMPLES
    ]
    result: list[Combo] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()
    names = list(axes)
    for positions in itertools.product(*(range(len(axes[n])) for n in names)):
        answers: dict[str, Any] = {}
        for name, pos in zip(names, positions, strict=True):
            if is_asked(qs[name], answers):
                answers[name] = axes[name][pos]
        # Alternate so every alternating value meets every value of every axis (a Latin design):
        # the i-th combination's parity would tie it to the last axis instead.
        for offset, (name, values) in enumerate(alternating.items()):
            answers[name] = values[(sum(positions) + offset) % len(values)]
        key = tuple(sorted((k, repr(v)) for k, v in answers.items()))
        if key in seen:  # a question that was not asked collapses two products into one
            continue
        seen.add(key)
        index = len(result)
        for name in free:
            values = FREE_SAMPLES[name]
            # A fixed pseudo-random pick, so samples don't move in lockstep with the axes.
            digest = hashlib.sha256(f"{name}:{index}".encode()).digest()
            value = values[int.from_bytes(digest[:4], "big") % len(values)]
            if is_asked(qs[name], answers):
                answers[name] = value
        parts = [_id_part(n, answers[n]) for n in names if n in answers]
        parts += [
            "py" + str(answers[n]).replace(".", "")
            if n == "python_version"
            else _id_part(n, answers[n])
            for n in alternating
        ]
        result.append(Combo(id="-".join(parts), index=index, answers=answers))
    return tuple(result)


def answer_tuples(combo: Combo, names: list[str], strength: int) -> set[tuple[Any, ...]]:
    """Every `strength` answers of `combo` to different questions among `names`, as
    ((question, value), ...) in the order of `names`."""
    values = [(name, combo.answers.get(name)) for name in names]
    return set(itertools.combinations(values, strength))


def _tier_questions() -> list[str]:
    questions_ = questions()
    return [*multiplying_questions(), *(name for name in ALTERNATING if name in questions_)]


def _closest_to_defaults() -> Combo:
    questions_ = questions()
    names = _tier_questions()
    return min(
        combos(),
        key=lambda combo: sum(
            combo.answers.get(name) != questions_[name].get("default") for name in names
        ),
    )


@cache
def integration_tier() -> frozenset[str]:
    """The combinations whose generated integration tests (real services) the matrix runs.

    The tiers: every combination is rendered, linted, type-checked and its deploy files
    checked. Its generated suite runs in two tiers, both computed from copier.yml's questions
    (python_version included):

    - this one, the whole suite (the integration tests and the unit tests marked `processes`,
      which start commands, are most of a suite's CPU: each starts its own API and worker
      processes): a smallest pairwise-covering set, in which any two values of any two
      questions meet in one of the combinations, holding the combination closest to the
      defaults (what most teams generate);
    - unit_tier(), the unit tests.

    Each member costs a suite's run, so the sets are searched for, not picked greedily.
    TEMPLATE_MATRIX=full runs the whole suite in every combination (before a release).
    """
    if os.environ.get("TEMPLATE_MATRIX", "").strip().lower() == "full":
        return frozenset(combo.id for combo in combos())
    chosen = smallest_cover(combos(), _tier_questions(), 2, [_closest_to_defaults()])
    return frozenset(combo.id for combo in chosen)


@cache
def unit_tier() -> frozenset[str]:
    """The combinations whose generated unit tests the matrix runs: a smallest set, holding
    integration_tier(), in which any three values of any three questions meet in one of the
    combinations (14 of 32 today). The others get the static checks only: their code is the
    same templates, and any three answers' interplay is tested in a combination that has
    them. TEMPLATE_MATRIX=full: every combination."""
    if os.environ.get("TEMPLATE_MATRIX", "").strip().lower() == "full":
        return frozenset(combo.id for combo in combos())
    whole_suite = [combo for combo in combos() if combo.id in integration_tier()]
    chosen = smallest_cover(combos(), _tier_questions(), 3, whole_suite)
    return frozenset(combo.id for combo in chosen)


def smallest_cover(
    candidates: Sequence[Combo], names: list[str], strength: int, required: Sequence[Combo]
) -> list[Combo]:
    """A smallest set of `candidates` holding `required` in which every `strength` answers
    (to different questions among `names`) that any candidate has occur together at least
    once (a covering array).

    Branch and bound: take the lowest tuple not covered yet and try, in turn, each candidate
    that has it; a branch stops as soon as it cannot beat the best set found (it needs at
    least the uncovered tuples over the most a candidate holds). The greedy set (the candidate
    covering the most new tuples, each time) is the first bound.
    """
    bits: dict[tuple[Any, ...], int] = {}
    masks: list[int] = []
    for combo in candidates:
        mask = 0
        # In a fixed order (a set's order changes with the hash seed): the same set each run.
        for answers in sorted(answer_tuples(combo, names, strength), key=repr):
            mask |= 1 << bits.setdefault(answers, len(bits))
        masks.append(mask)
    everything = (1 << len(bits)) - 1
    most = max(mask.bit_count() for mask in masks)
    start = [candidates.index(combo) for combo in required]
    start_covered = 0
    for index in start:
        start_covered |= masks[index]

    best, covered = list(start), start_covered
    while covered != everything:
        pick = max(range(len(candidates)), key=lambda i: (masks[i] & ~covered).bit_count())
        best.append(pick)
        covered |= masks[pick]

    def search(chosen: list[int], covered: int) -> None:
        nonlocal best
        if covered == everything:
            best = list(chosen)
            return
        missing = everything & ~covered
        if len(chosen) + -(-missing.bit_count() // most) >= len(best):
            return  # cannot beat the best set found
        lowest = missing & -missing
        for index, mask in enumerate(masks):
            if mask & lowest:
                chosen.append(index)
                search(chosen, covered | mask)
                chosen.pop()

    search(start, start_covered)
    return [candidates[index] for index in best]


def pick_combo(required: Mapping[str, Any], preferred: Mapping[str, Any] | None = None) -> Combo:
    """A combination with every `required` answer: the first that also has every `preferred`
    answer, if one does; among equals, one of the integration tier first (a feature check on
    it reads the matrix's run of its whole suite instead of starting a run of its own)."""
    candidates = [
        combo
        for combo in combos()
        if all(combo.answers.get(name) == value for name, value in required.items())
    ]
    assert candidates, f"no combination with {dict(required)}"

    def rank(combo: Combo) -> tuple[bool, bool]:
        has_preferred = all(
            combo.answers.get(name) == value for name, value in (preferred or {}).items()
        )
        return (not has_preferred, combo.id not in integration_tier())

    return min(candidates, key=rank)  # min() keeps the first of equals


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def render(dst: Path, answers: Mapping[str, Any], **kwargs: Any) -> Path:
    """Render the working tree of the template (vcs_ref HEAD includes uncommitted changes).

    Tests render through pytest-copie's `copie` / `copie_session` fixtures; this stays for code
    outside a pytest session (tests/bench/run.py, ad-hoc renders), where no fixture exists.
    """
    options: dict[str, Any] = {
        "data": dict(answers),
        "defaults": True,
        "unsafe": True,
        "vcs_ref": "HEAD",
        "quiet": True,
    }
    options.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", copier.errors.DirtyLocalWarning)
        copier.run_copy(str(REPO_ROOT), str(dst), **options)
    return dst


def rendered_files(root: Path) -> list[Path]:
    """Every file under root, relative, sorted."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def text_of(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Interpreters and shared virtual environments
# ---------------------------------------------------------------------------------------------


def _run_quiet(cmd: list[str], **env: str) -> str | None:
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **env},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


@cache
def find_interpreter(version: str) -> tuple[Path | None, str]:
    """(interpreter, how it was found) for a python_version choice such as "3.12"."""
    var = "TEMPLATE_PYTHON_" + version.replace(".", "_")
    if explicit := os.environ.get(var):
        path = Path(explicit)
        if path.exists():
            return path, f"${var}"
        return None, f"${var}={explicit} does not exist"
    if shutil.which("pyenv") and (bare := _run_quiet(["pyenv", "versions", "--bare"])):
        pattern = re.compile(rf"^{re.escape(version)}\.\d+$")
        installed = sorted(
            (line.strip() for line in bare.splitlines() if pattern.match(line.strip())),
            key=_version_key,
            reverse=True,
        )
        for name in installed:
            found = _run_quiet(["pyenv", "which", "python"], PYENV_VERSION=name)
            if found and Path(found).exists():
                return Path(found), f"pyenv {name}"
    if found := shutil.which(f"python{version}"):
        return Path(found), f"PATH python{version}"
    return None, (
        f"no Python {version}: set ${var}, install it with pyenv, or put python{version} on PATH"
    )


def interpreter_version(python: Path) -> str:
    out = _run_quiet([str(python), "-c", "import sys; print(sys.version)"])
    return out or "unknown"


def union_requirements() -> list[str]:
    """Dependencies and dev dependencies of every combination, as derive() computes them."""
    union: set[str] = set()
    for combo in combos():
        derived = combo.derived
        union.update(derived["dependencies"])
        union.update(derived["dev_dependencies"])
    return sorted(union, key=str.lower)


def uv_executable() -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("uv not found (install it: python3 -m pip install uv)")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


STALE_ENV_SECONDS = 6 * 3600


def _prune_stale_envs(keep: Path) -> None:
    """Delete shared venvs (other dependency sets) unused for STALE_ENV_SECONDS."""
    now = time.time()
    for env_dir in (CACHE_DIR / "envs").glob("py*-*"):
        if env_dir == keep or not env_dir.is_dir():
            continue
        marker = env_dir / ".complete"
        try:
            last_used = marker.stat().st_mtime if marker.exists() else env_dir.stat().st_mtime
        except OSError:
            continue
        if now - last_used > STALE_ENV_SECONDS:
            shutil.rmtree(env_dir, ignore_errors=True)


def shared_env(version: str, python: Path, requirements: list[str]) -> Path:
    """A venv for `version` holding `requirements`, cached by a hash of what goes in it.

    Returns the venv's python. Safe to call from several pytest-xdist workers at once.
    """
    fingerprint = json.dumps(
        {
            "python": str(python.resolve()),
            "version": interpreter_version(python),
            "requirements": requirements,
            "bytecode": True,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    env_dir = CACHE_DIR / "envs" / f"py{version.replace('.', '')}-{digest}"
    venv_python = env_dir / "bin" / "python"
    marker = env_dir / ".complete"
    with file_lock(CACHE_DIR / "envs" / f".{env_dir.name}.lock"):
        _prune_stale_envs(keep=env_dir)
        if marker.exists() and venv_python.exists():
            marker.touch()  # last use, for _prune_stale_envs
            return venv_python
        shutil.rmtree(env_dir, ignore_errors=True)
        uv = uv_executable()
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT"}}
        env["UV_PYTHON_DOWNLOADS"] = "never"
        for cmd in (
            [uv, "venv", "--quiet", "--python", str(python), str(env_dir)],
            # Compiled now: where PYTHONDONTWRITEBYTECODE=1 is set (it is on these machines),
            # every process run outside the generated suites (mypy, the bench) would compile
            # SQLAlchemy, pydantic and FastAPI again (1.6 s of CPU per start). The suites
            # keep theirs under PYTHONPYCACHEPREFIX (generated_test_env).
            [
                *(uv, "pip", "install", "--quiet", "--compile-bytecode"),
                *("--python", str(venv_python), *requirements),
            ],
        ):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}"
                )
        marker.write_text(fingerprint + "\n", encoding="utf-8")
        return venv_python


def normalize_requirement_name(requirement: str) -> str:
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

# `python -c DATABASE_SCRIPT ADMIN_URL create|drop NAME`, with a venv's python that has asyncpg
# (ADMIN_URL without "+asyncpg"): creates or drops a PostgreSQL database.
DATABASE_SCRIPT = """
import asyncio, sys
import asyncpg

async def main(admin, action, name):
    connection = await asyncpg.connect(admin)
    try:
        if action == "create":
            await connection.execute(f'CREATE DATABASE "{name}"')
        else:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()

asyncio.run(main(*sys.argv[1:]))
"""


def service_addresses() -> dict[str, tuple[str, int]]:
    pg = urlsplit(os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    return {
        "postgres": (pg.hostname or "127.0.0.1", pg.port or 5432),
        "redis": (
            os.environ.get("TASKIQ_REDIS_HOST", "127.0.0.1"),
            int(os.environ.get("TASKIQ_REDIS_PORT", "6379")),
        ),
        "rabbitmq": (
            os.environ.get("TASKIQ_RABBITMQ_HOST", "127.0.0.1"),
            int(os.environ.get("TASKIQ_RABBITMQ_PORT", "5672")),
        ),
    }


def is_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def generated_test_env(combo: Combo) -> dict[str, str]:
    """Environment for a generated project's own tests (see CONTRACT: 'Generated tests')."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS"}
        and not k.startswith(("PYTEST_XDIST", "COPIER_"))
    }
    env["CI"] = "true"
    # Bytecode goes to a tree of its own, never into the project (whose files the tests
    # compare): every process a suite starts (API, workers, scheduler, scripts) then loads the
    # project's modules compiled instead of compiling them again. With a prefix set, Python
    # reads .pyc files only there, so the venv's packages are compiled into it once too.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(CACHE_DIR / "pycache")
    env.setdefault("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    services = combo.derived["services"]
    if "redis" in services:
        env.setdefault("TASKIQ_REDIS_HOST", "127.0.0.1")
        env.setdefault("TASKIQ_REDIS_PORT", "6379")
        env.setdefault("TASKIQ_REDIS_DB", str(combo.answers.get("redis_db", 3)))
    if "rabbitmq" in services:
        env.setdefault("TASKIQ_RABBITMQ_HOST", "127.0.0.1")
        env.setdefault("TASKIQ_RABBITMQ_PORT", "5672")
        env.setdefault("TASKIQ_RABBITMQ_USER", "guest")
        env.setdefault("TASKIQ_RABBITMQ_PASSWORD", "guest")
        env.setdefault("TASKIQ_RABBITMQ_VHOST", "/")
    return env


class Completed(subprocess.CompletedProcess[str]):
    """A finished command, plus the processes it left running (killed by run())."""

    leftovers: list[str]


@dataclass
class RunCost:
    """What the runs of one kind cost: wall-clock seconds, and CPU seconds of the command and
    of the children it waited for (workers, servers, scripts its tests started)."""

    runs: int = 0
    wall: float = 0.0
    cpu: float = 0.0


# Per kind of run (run()'s `kind`), for the session's closing summary (conftest.py).
RUN_COSTS: dict[str, RunCost] = {}


def machine_cpu_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat: all but idle
    and iowait); 0 where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


_costs_lock = threading.Lock()


def _wait_with_usage(proc: subprocess.Popen[str], timeout: float) -> tuple[int, float]:
    """Wait for `proc` like Popen.wait(timeout), and return its exit code with the CPU seconds
    of it and its reaped descendants (os.wait4: Popen.wait discards them)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() >= deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _group_members(pgid: int) -> list[str]:
    """Live processes of a process group (read from /proc), as "pid: command line"."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid or fields[0] in {"Z", "X"}:
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        members.append(f"{entry.name}: {cmdline.strip()[:200]}")
    return members


def _end_group(pgid: int, grace: float = 3.0) -> list[str]:
    """Wait `grace` seconds for a process group to empty, then kill what is left; return it."""
    deadline = time.monotonic() + grace
    while (members := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if members:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
            time.sleep(1.0)
            if not _group_members(pgid):
                break
    return members


_active_groups: set[int] = set()
_active_lock = threading.Lock()


def kill_active_runs() -> None:
    """Kill every command run() is still waiting for (e.g. background runs at session end)."""
    with _active_lock:
        groups = list(_active_groups)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


GENERATED_TESTS_TIMEOUT = float(os.environ.get("TEMPLATE_GENERATED_TESTS_TIMEOUT", "900"))


def background_jobs() -> int:
    """How many generated test suites run at once (TEMPLATE_MATRIX_JOBS, default 3): they wait
    on their workers, schedulers and brokers far more than they compute."""
    return max(1, int(os.environ.get("TEMPLATE_MATRIX_JOBS", "3")))


def run(
    cmd: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    kind: str | None = None,
) -> Completed:
    """Run a command in its own process group; on timeout, or when it leaves processes behind
    (workers, servers started by a test suite), kill the whole group. Its wall-clock and CPU
    time count towards RUN_COSTS[kind] (default: the command's first three words)."""
    began = time.monotonic()
    cpu = 0.0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # Files, not pipes: a leftover grandchild holding a pipe open would block the read.
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        with _active_lock:
            _active_groups.add(proc.pid)
        note = ""
        try:
            returncode, cpu = _wait_with_usage(proc, timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, cpu = _wait_with_usage(proc, 60)
            returncode = -9
            note = f"\n[harness] timed out after {timeout}s; killed its process group\n"
        finally:
            leftovers = _end_group(proc.pid)
            with _active_lock:
                _active_groups.discard(proc.pid)
        out.seek(0)
        err.seek(0)
        result = Completed(cmd, returncode, out.read() + note, err.read())
    result.leftovers = leftovers
    label = kind or " ".join(Path(str(part)).name for part in cmd[:3])
    with _costs_lock:
        cost = RUN_COSTS.setdefault(label, RunCost())
        cost.runs += 1
        cost.wall += time.monotonic() - began
        cost.cpu += cpu
    return result


def explain(proc: subprocess.CompletedProcess[str], limit: int = 12000) -> str:
    text = (
        f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return text if len(text) <= limit else "...\n" + text[-limit:]
