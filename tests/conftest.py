"""Fixtures of the template's test harness (see helpers.py for the machinery)."""

from __future__ import annotations

import os
import resource
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import IN_CI, Combo
from pytest_copie.plugin import Copie

_MACHINE_CPU_AT_START = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    # Background runs (generated test suites) die with the session, also on -x or Ctrl-C.
    config.add_cleanup(helpers.kill_active_runs)
    # pytest-copie's --template (addopts: `--template=.`) is read relative to the working
    # directory at each render; pin it to the repository so a chdir or another cwd can't move it.
    template = Path(config.option.template)
    if not template.is_absolute():
        config.option.template = str((config.rootpath / template).resolve())
    # A user's own copier settings (defaults:, trust) must not leak into the renders.
    # An empty YAML mapping: copier refuses a file that parses to None.
    fd, path = tempfile.mkstemp(prefix="copier-settings-", suffix=".yml")
    os.write(fd, b"{}\n")
    os.close(fd)
    os.environ["COPIER_SETTINGS_PATH"] = path
    config.add_cleanup(lambda: Path(path).unlink(missing_ok=True))


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_MACHINE_CPU_AT_START] = helpers.machine_cpu_seconds()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Where the commands' time went, by kind of run, most CPU first: on this 2-core machine
    the session is bound by CPU, so that is what a slower CI run shows first. Then the
    harness's own process (renders, copier updates, git) and the whole machine's busy CPU
    (services included), so that what no command accounts for shows too."""
    costs = sorted(helpers.RUN_COSTS.items(), key=lambda item: -item[1].cpu)
    if not costs:
        return
    terminalreporter.section("commands run by the harness: CPU and wall-clock seconds")
    for kind, cost in costs[:12]:
        terminalreporter.write_line(
            f"{cost.cpu:8.0f} s CPU {cost.wall:8.0f} s wall {cost.runs:5d} runs  {kind}"
        )
    total = sum(cost.cpu for _, cost in costs)
    terminalreporter.write_line(f"{total:8.0f} s CPU in all")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    terminalreporter.write_line(
        f"{usage.ru_utime + usage.ru_stime:8.0f} s CPU in the harness process itself"
    )
    started = terminalreporter.config.stash.get(_MACHINE_CPU_AT_START, None)
    if started is not None:
        busy = helpers.machine_cpu_seconds() - started
        terminalreporter.write_line(
            f"{busy:8.0f} s CPU busy on the machine ({os.cpu_count()} cores), services included"
        )


def unavailable(reason: str) -> None:
    """A missing prerequisite (service, interpreter, binary) fails the test, never skips it:
    a green run must mean the checks ran. Deselect what you cannot run (`-m`, `-k`)."""
    hint = " (CI=true: prerequisites must be present)" if IN_CI else " (deselect with -m/-k)"
    pytest.fail(reason + hint, pytrace=False)


# ---------------------------------------------------------------------------------------------
# Rendering, once per combination per session
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    combo: Combo
    path: Path
    files: tuple[Path, ...]  # relative paths, as rendered (before any tool ran in the project)

    @property
    def package_dir(self) -> Path:
        return self.path / "src" / self.combo.package

    def read(self, relative: str) -> str:
        """A rendered file's text; `{pkg}` in `relative` is the package name."""
        return (self.path / relative.format(pkg=self.combo.package)).read_text("utf-8")

    def __repr__(self) -> str:
        return f"Rendered({self.combo.id} at {self.path})"


class RenderCache:
    """One pytest-copie render per combination per session, kept under the combination's id."""

    def __init__(self, copie: Copie) -> None:
        self.copie = copie
        self._done: dict[str, Rendered | BaseException] = {}

    def __call__(self, combo: Combo) -> Rendered:
        if combo.id not in self._done:
            result = self.copie.copy(extra_answers=dict(combo.answers))
            if result.exception is not None or result.project_dir is None:
                self._done[combo.id] = result.exception or RuntimeError("no project rendered")
            else:
                # copie names its renders copie000, copie001...: a readable name instead, so
                # that failures and kept projects (--keep-copied-projects) say which combination.
                dst = result.project_dir.rename(result.project_dir.with_name(combo.id))
                self._done[combo.id] = Rendered(combo, dst, tuple(helpers.rendered_files(dst)))
        outcome = self._done[combo.id]
        if isinstance(outcome, BaseException):
            pytest.fail(f"rendering {combo.id} failed: {outcome!r}", pytrace=False)
        return outcome


@pytest.fixture(scope="session")
def render_cache(copie_session: Copie) -> RenderCache:
    return RenderCache(copie_session)


@pytest.fixture
def rendered(render_cache: RenderCache, combo: Combo) -> Rendered:
    """The project rendered for the test's `combo` parameter (shared by every test)."""
    return render_cache(combo)


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def service_status() -> dict[str, tuple[str, int, bool]]:
    return {
        name: (host, port, helpers.is_reachable(host, port))
        for name, (host, port) in helpers.service_addresses().items()
    }


@pytest.fixture(scope="session")
def require_services(
    service_status: dict[str, tuple[str, int, bool]],
) -> Callable[[Iterable[str]], None]:
    def require(names: Iterable[str]) -> None:
        down = [
            f"{name} ({host}:{port})"
            for name in names
            for host, port, up in [service_status[name]]
            if not up
        ]
        if down:
            unavailable("service not reachable: " + ", ".join(down))

    return require


# ---------------------------------------------------------------------------------------------
# Shared virtual environments, one per python_version choice
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def union_requirements() -> list[str]:
    return helpers.union_requirements()


@pytest.fixture(scope="session")
def shared_python(union_requirements: list[str]) -> Callable[[str], Path]:
    """shared_python("3.12") -> the python of a venv holding every combination's dependencies."""
    built: dict[str, Path | BaseException] = {}

    def get(version: str) -> Path:
        interpreter, how = helpers.find_interpreter(version)
        if interpreter is None:
            unavailable(how)
        assert interpreter is not None
        if version not in built:
            try:
                built[version] = helpers.shared_env(version, interpreter, union_requirements)
            except Exception as exc:
                built[version] = exc
        outcome = built[version]
        if isinstance(outcome, BaseException):
            pytest.fail(f"building the Python {version} venv failed: {outcome}", pytrace=False)
        return outcome

    return get


# ---------------------------------------------------------------------------------------------
# Background runs: the generated test suites wait on workers, schedulers and brokers far more
# than they compute, so several run at once (TEMPLATE_MATRIX_JOBS, default 3) while pytest
# itself stays serial. Each test still reports its own combination's result.
# ---------------------------------------------------------------------------------------------

_SELECTED = pytest.StashKey[dict[str, list[Combo]]]()
_EARLY_SELECTED = pytest.StashKey[dict[str, list[Any]]]()


@dataclass(frozen=True)
class EarlyRun:
    """How a parametrized fixture's runs start with the session (see EARLY_RUNS).

    `prepare(request, param)` runs in the main thread (it may render, skip or fail) and returns
    the run itself, a callable that the lane calls in the background; the fixture returns what
    that call returned."""

    prepare: Callable[[pytest.FixtureRequest, Any], Callable[[], Any]]
    lane: str


# Fixtures whose runs are long waits of their own (the delivery scenarios start brokers, kill
# workers and wait out idle timeouts): a test module registers them here when it is imported,
# which collection does before any fixture runs. Where a selected test uses one, its selected
# parameters' runs start when the session starts, on the lane named (EARLY_LANE_JOBS at a
# time), and the tests using it go last, so that the serial checks run meanwhile.
EARLY_RUNS: dict[str, EarlyRun] = {}
EARLY_LANE_JOBS = {"delivery": int(os.environ.get("TEMPLATE_DELIVERY_JOBS", "2"))}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that only wait for a background run go last, so that the serial checks (update
    and upgrade included) run while those runs do: first the matrix's suites and mypy, then
    the feature checks (where the matrix runs the same combination's whole suite in this
    session, they read that run instead of starting one), then the early runs' tests
    (EARLY_RUNS)."""
    waiting = [item for item in items if _name_of(item) in {GENERATED_SUITES, MYPY}]
    feature_checks = [item for item in items if "run_feature_tests" in _fixtures_of(item)]
    early = [item for item in items if set(_fixtures_of(item)) & EARLY_RUNS.keys()]
    last = [*waiting, *feature_checks, *early]
    if last:
        items[:] = [item for item in items if item not in last] + last


def _fixtures_of(item: pytest.Item) -> list[str]:
    return list(getattr(item, "fixturenames", []))


def _name_of(item: pytest.Item) -> str:
    return str(getattr(item, "originalname", item.name))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember, per test function, the combinations that were selected (after -k / -m), and
    per early-run fixture (EARLY_RUNS) its selected parameters, in the tests' order."""
    selected: dict[str, list[Combo]] = {}
    early: dict[str, list[Any]] = {}
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        combo = params.get("combo")
        if isinstance(combo, Combo):
            selected.setdefault(getattr(item, "originalname", item.name), []).append(combo)
        for name in EARLY_RUNS.keys() & params.keys():
            if params[name] not in early.setdefault(name, []):
                early[name].append(params[name])
    session.config.stash[_SELECTED] = selected
    session.config.stash[_EARLY_SELECTED] = early


Prepared = tuple[list[str], Path, dict[str, str], float]  # (cmd, cwd, env, timeout)


class BackgroundRuns:
    def __init__(self, config: pytest.Config, jobs: int) -> None:
        self._config = config
        self._executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="matrix")
        # Tests named here run one at a time on a lane of their own: mypy computes rather than
        # waits, and its runs share one cache directory.
        self._lanes = {MYPY: ThreadPoolExecutor(max_workers=1, thread_name_prefix="mypy")}
        self._lanes.update(
            (lane, ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix=lane))
            for lane, jobs in EARLY_LANE_JOBS.items()
        )
        self._futures: dict[tuple[str, str], Future[helpers.Completed]] = {}
        self._early: dict[tuple[str, str], Future[Any]] = {}
        self._started: set[str] = set()

    def _submit(self, key: tuple[str, str], prepared: Prepared) -> None:
        cmd, cwd, env, timeout = prepared
        executor = self._lanes.get(key[0], self._executor)
        self._futures[key] = executor.submit(helpers.run, cmd, cwd, env, timeout, key[0])

    def result(
        self, test: str, combo: Combo, prepare: Callable[[Combo], Prepared]
    ) -> helpers.Completed:
        """The run for (test, combo); on the first call for `test`, start those of every
        selected combination. `prepare` runs in the main thread (rendering is not
        thread-safe) and may skip or fail; it is redone for the test that owns it."""
        self.start(test, prepare)
        if (test, combo.id) not in self._futures:
            self._submit((test, combo.id), prepare(combo))
        return self._futures[(test, combo.id)].result()

    def start(self, test: str, prepare: Callable[[Combo], Prepared]) -> None:
        """Start the runs of `test` for every selected combination, once per session."""
        if test in self._started:
            return
        self._started.add(test)
        for other in self._config.stash.get(_SELECTED, {}).get(test, []):
            try:
                prepared = prepare(other)
            except (Exception, pytest.skip.Exception, pytest.fail.Exception):
                continue  # its own test calls prepare again and reports why
            self._submit((test, other.id), prepared)

    def start_early(self, name: str, request: pytest.FixtureRequest) -> None:
        """Start the runs of early-run fixture `name` for its selected parameters, once."""
        if f"early:{name}" in self._started:
            return
        self._started.add(f"early:{name}")
        declared = EARLY_RUNS[name]
        for param in self._config.stash.get(_EARLY_SELECTED, {}).get(name, []):
            try:
                job = declared.prepare(request, param)
            except (Exception, pytest.skip.Exception, pytest.fail.Exception):
                continue  # the fixture prepares it again and reports why
            self._early[(name, repr(param))] = self._lanes[declared.lane].submit(job)

    def early_result(self, name: str, request: pytest.FixtureRequest) -> Any:
        """What the run of `request`'s fixture parameter returned (prepared now if it did not
        start with the session)."""
        self.start_early(name, request)
        key = (name, repr(request.param))
        if key not in self._early:
            job = EARLY_RUNS[name].prepare(request, request.param)
            self._early[key] = self._lanes[EARLY_RUNS[name].lane].submit(job)
        return self._early[key].result()

    def selected(self, test: str, combo: Combo) -> bool:
        """Whether `test` runs for `combo` in this session."""
        chosen = self._config.stash.get(_SELECTED, {}).get(test, [])
        return any(other.id == combo.id for other in chosen)

    def close(self) -> None:
        helpers.kill_active_runs()
        for executor in [self._executor, *self._lanes.values()]:
            executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def background_runs(request: pytest.FixtureRequest) -> Iterator[BackgroundRuns]:
    runs = BackgroundRuns(request.config, helpers.background_jobs())
    yield runs
    runs.close()


@pytest.fixture(scope="session")
def generated_suite(
    render_cache: RenderCache,
    shared_python: Callable[[str], Path],
    require_services: Callable[[list[str]], None],
) -> Callable[[Combo], Prepared]:
    """How to run a combination's generated suite against the real services (CI=true),
    verbosely: a line per test, which the feature checks read. Its integration tests, and the
    unit tests that start processes, run where the combination is in
    helpers.integration_tier(); its other unit tests where it is in helpers.unit_tier()."""

    def prepare(combo: Combo) -> Prepared:
        require_services(combo.derived["services"])
        project = render_cache(combo)
        if not (project.path / "tests").is_dir():
            pytest.fail("the generated project has no tests/ directory", pytrace=False)
        python = shared_python(str(combo.answers["python_version"]))
        # Outside the tier, also not the unit tests that start commands of their own (marker
        # `processes`: the worker, alembic, the probe; a third of a unit run's CPU).
        outside = ["-m", "not integration and not processes"]
        tier = [] if combo.id in helpers.integration_tier() else outside
        return (
            [str(python), "-m", "pytest", "-v", "-p", "no:cacheprovider", *tier],
            project.path,
            helpers.generated_test_env(combo),
            helpers.GENERATED_TESTS_TIMEOUT,
        )

    return prepare


@pytest.fixture(scope="session")
def mypy_run(
    render_cache: RenderCache, shared_python: Callable[[str], Path]
) -> Callable[[Combo], Prepared]:
    """How to type-check a combination with its own configuration (test_mypy)."""

    def prepare(combo: Combo) -> Prepared:
        project = render_cache(combo)
        pyproject = tomllib.loads((project.path / "pyproject.toml").read_text(encoding="utf-8"))
        # Every generated project configures mypy: its absence is a defect, not a reason to skip.
        assert "mypy" in pyproject.get("tool", {}), "the generated pyproject.toml lacks [tool.mypy]"
        python = shared_python(str(combo.answers["python_version"]))
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        # Third-party modules are cached across combinations; the project's own are rechecked.
        cache_dir = helpers.CACHE_DIR / "mypy" / f"{python.parent.parent.name}-{worker}"
        env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "MYPYPATH"}}
        # No paths: the project's own configuration names what to check (the package, bench/).
        return [str(python), "-m", "mypy", "--cache-dir", str(cache_dir)], project.path, env, 600

    return prepare


@pytest.fixture(scope="session", autouse=True)
def _generated_suites_start_first(
    request: pytest.FixtureRequest,
) -> None:
    """The generated suites are the session's longest waits (workers, brokers, schedulers), and
    mypy the longest serial check: both start when the session starts (mypy on a lane of its
    own, one run at a time), so that they overlap the serial checks (lint, deploy, update)
    instead of following them; so do the early runs (EARLY_RUNS: the delivery scenarios).
    Nothing starts where no such test is selected."""
    selected = request.config.stash.get(_SELECTED, {})
    runs: BackgroundRuns | None = None
    for test, prepare in [(GENERATED_SUITES, "generated_suite"), (MYPY, "mypy_run")]:
        if selected.get(test):
            runs = request.getfixturevalue("background_runs")
            runs.start(test, request.getfixturevalue(prepare))
    for name in request.config.stash.get(_EARLY_SELECTED, {}):
        runs = runs or request.getfixturevalue("background_runs")
        runs.start_early(name, request)


GENERATED_SUITES = "test_generated_tests"
MYPY = "test_mypy"
RunFeatureTests = Callable[[Combo, str], helpers.Completed]


@pytest.fixture
def run_feature_tests(
    background_runs: BackgroundRuns,
    generated_suite: Callable[[Combo], Prepared],
) -> RunFeatureTests:
    """A rendered project's own `-m <marker>` tests, run in the shared venv against the real
    services; they must pass and, under CI=true, nothing may skip. Where the matrix runs the
    combination's whole suite in this session (test_generated_tests, integration tier), that
    run is read instead: the same tests, against the same services."""

    def run(combo: Combo, marker: str) -> helpers.Completed:
        whole_suite = combo.id in helpers.integration_tier()
        if whole_suite and background_runs.selected("test_generated_tests", combo):
            proc = background_runs.result("test_generated_tests", combo, generated_suite)
        else:
            command, cwd, env, timeout = generated_suite(combo)
            proc = helpers.run([*command, "-m", marker], cwd, env, timeout, f"-m {marker}")
        assert proc.returncode == 0, helpers.explain(proc)
        assert " SKIPPED" not in proc.stdout, helpers.explain(proc)
        return proc

    return run
