"""Delivery guarantees of the generated project, proven with its real processes, per broker.

For each broker, tests/delivery/scenario.py runs a rendered project's API (uvicorn) and
workers (`taskiq worker`) against private Redis / RabbitMQ instances it starts on ports of its
own (never the machine's shared services), killing and restarting them:

(a) 1,000 notes through the API, the worker SIGKILLed mid-batch, then restarted;
(b) the same with the broker restarted mid-batch;
(c) a worker dies holding a task while nothing else is sent;
(d) tasks sent with delays;
(e) SIGTERM during a running task;
(f) poison messages on the queue;
(g) a task that blocks its event loop for 10 idle timeouts, with a second worker polling;
(h) per broker and state store: 400 notes, the worker SIGKILLed mid-batch: every state final;
(i) per broker and state store: a worker killed right after an ack / a final state's write.
(j) PostgreSQL (a private cluster) restarted mid-batch of row-writing tasks.

"Exactly once" of effects is at-least-once delivery plus the note's unique task id. The
scenario runs once per broker (module fixture); each test asserts on one case's figures.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helpers
import pytest
from conftest import EARLY_RUNS, BackgroundRuns, EarlyRun, RenderCache, unavailable
from helpers import Combo

DELIVERY_DIR = Path(__file__).resolve().parent / "delivery"
sys.path.insert(0, str(DELIVERY_DIR))

import services  # noqa: E402

pytestmark = pytest.mark.delivery

SCENARIO = DELIVERY_DIR / "scenario.py"
BATCH = 1000
# SIGTERM reaches the worker processes within the process manager's 1 s poll, and the broker's
# shutdown after the wait is bounded by taskiq's --shutdown-timeout (5 s).
EXIT_OVERHEAD_SECONDS = 5.0
# A delayed task may start this much late (the bound), and never early (the small
# allowance is for comparing PostgreSQL's now() with this machine's clock).
DELAY_LATE_SECONDS = 1.0
DELAY_EARLY_SECONDS = 0.05
# With the shipped defaults a SIGKILLed worker's tasks are finished by another worker within
# this (the bound; Redis: idle timeout 15 s + one reclaim interval of at most 5 s).
RECOVERY_SECONDS = 30.0
# The crash-states case (scenario.case_crash_states): tasks sent, and the bound on final states.
STATES_BATCH = 400
STATES_FINAL_WITHIN = 30.0


def delivery_combo(broker: str, **fixed: Any) -> Combo:
    """The rendered combination closest to copier.yml's defaults that uses `broker` (and the
    `fixed` answers)."""
    questions = helpers.questions()
    axes = helpers.multiplying_questions()
    wanted = {"broker": broker, **fixed}

    def distance(combo: Combo) -> int:
        return sum(
            combo.answers.get(name) != questions[name].get("default")
            for name in axes
            if name not in wanted
        )

    candidates = [
        combo
        for combo in helpers.combos()
        if all(combo.answers.get(name) == value for name, value in wanted.items())
    ]
    assert candidates, f"no combination renders {wanted}"
    return min(candidates, key=distance)


@dataclass
class DeliveryRun:
    broker: str
    results: dict[str, Any]
    workdir: Path
    output: str

    def case(self, name: str) -> dict[str, Any]:
        result = self.results.get(name)
        if result is None:
            pytest.fail(
                f"the {self.broker} scenario left no result for {name}:\n{self.output[-6000:]}",
                pytrace=False,
            )
        if "error" in result:
            pytest.fail(f"{name} on {self.broker} failed:\n{result['error']}\n{self.logs(name)}")
        return result

    def logs(self, name: str) -> str:
        """The tails of the case's process logs (files are named after the case's letter)."""
        letter = CASE_NAMES[name]
        tails = []
        for log in sorted(self.workdir.glob(f"{letter}-*.log")):
            text = log.read_text(errors="replace")
            tails.append(f"--- {log.name} (last 3000 characters)\n{text[-3000:]}")
        return "\n".join(tails)


# Each case's name in scenario.py, and the letter its process logs are named after.
CASE_NAMES = {
    "worker_crash": "a",
    "broker_restart": "b",
    "idle_queue_crash": "c",
    "delays": "d",
    "sigterm": "e",
    "poison": "f",
    "blocking_task": "g",
    # Run per broker and per task-state store (the Redis one, or PostgreSQL's task_states table).
    "crash_states": "h",
    "crash_window": "i",
    "postgres_restart": "j",
}
CRASH_STATE_CASES = ("crash_states", "crash_window")
# Once per broker: every other case.
DELIVERY_CASES = tuple(name for name in CASE_NAMES if name not in CRASH_STATE_CASES)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def delivery(request: pytest.FixtureRequest, background_runs: BackgroundRuns) -> DeliveryRun:
    """Every case but the crash-state ones, on one broker (the run started with the session)."""
    run: DeliveryRun = background_runs.early_result("delivery", request)
    return run


@pytest.fixture(
    scope="module",
    params=[
        pytest.param((broker, backend), id=f"{broker}-{backend}")
        for broker in ("redis", "rabbitmq")
        for backend in ("redis", "none")
    ],
)
def crash_states(request: pytest.FixtureRequest, background_runs: BackgroundRuns) -> DeliveryRun:
    """The crash-state cases, per broker and task-state store (Redis, or PostgreSQL)."""
    run: DeliveryRun = background_runs.early_result("crash_states", request)
    return run


def _delivery_scenario(request: pytest.FixtureRequest, broker: str) -> Callable[[], DeliveryRun]:
    return prepare_scenario(request, delivery_combo(broker), DELIVERY_CASES)


def _crash_states_scenario(
    request: pytest.FixtureRequest, param: tuple[str, str]
) -> Callable[[], DeliveryRun]:
    broker, backend = param
    return prepare_scenario(
        request, delivery_combo(broker, result_backend=backend), CRASH_STATE_CASES
    )


# Each scenario is minutes of waiting on its processes: they start with the session, one at a
# time, while the other checks run (conftest.EARLY_RUNS).
EARLY_RUNS["delivery"] = EarlyRun(_delivery_scenario, lane="delivery")
EARLY_RUNS["crash_states"] = EarlyRun(_crash_states_scenario, lane="delivery")


def prepare_scenario(
    request: pytest.FixtureRequest, combo: Combo, cases: tuple[str, ...]
) -> Callable[[], DeliveryRun]:
    """Check the prerequisites and render (main thread); return the scenario's run."""
    require_services: Callable[[list[str]], None] = request.getfixturevalue("require_services")
    render_cache: RenderCache = request.getfixturevalue("render_cache")
    shared_python: Callable[[str], Path] = request.getfixturevalue("shared_python")
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    broker = str(combo.answers["broker"])
    require_services(["postgres"])
    if services.redis_server_binary() is None:
        unavailable("redis-server is not installed: the delivery tests start their own Redis")
    if broker == "rabbitmq" and services.rabbitmq_binaries() is None:
        unavailable("rabbitmq-server is not installed: the delivery tests start their own node")
    rendered = render_cache(combo)
    python = shared_python(str(combo.answers["python_version"]))
    workdir = tmp_path_factory.mktemp(f"delivery-{broker}")
    command = [
        str(python), str(SCENARIO),
        "--package", combo.package,
        "--broker", broker,
        "--workdir", str(workdir),
        "--cases", ",".join(cases),
    ]  # fmt: skip
    env = helpers.generated_test_env(combo)

    def run() -> DeliveryRun:
        try:
            proc = helpers.run(
                command, cwd=rendered.path, env=env, timeout=900, kind="delivery scenarios"
            )
        finally:
            services.clean_up_leftovers(workdir)
        results_file = workdir / "results.json"
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
        return DeliveryRun(broker, results, workdir, helpers.explain(proc))

    return run


def show(capsys: pytest.CaptureFixture[str], run: DeliveryRun, name: str, result: Any) -> None:
    """Print the case's figures, whatever the outcome: sent, completed, duplicates, lost."""
    figures = {key: value for key, value in result.items() if key != "error"}
    headline = ", ".join(
        f"{key.replace('_', ' ')} {figures.pop(key)}"
        for key in ("sent", "completed", "duplicates_suppressed", "lost")
        if key in figures
    )
    with capsys.disabled():
        print(f"\n[delivery {run.broker}] {name}: {headline}")
        if figures:
            print(f"    {json.dumps(figures, default=str)}")


def exactly_once(result: dict[str, Any]) -> None:
    assert result["lost"] == 0, f"{result['lost']} accepted task(s) never wrote their note"
    assert result["completed"] == result["sent"]
    assert result["rows_over_one"] == 0, "a task id wrote more than one note"


def test_a_worker_killed_mid_batch_loses_nothing(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("worker_crash")
    show(capsys, delivery, "(a) worker SIGKILLed mid-batch", result)
    assert result["sent"] == BATCH
    assert result["completed_at_kill"] < BATCH, "the worker was killed after the batch was done"
    if delivery.broker == "redis":
        assert result["unacknowledged_at_kill"] > 0, "the killed worker held no task"
        # Leases keep the idle timeout short: what the dead worker held is done soon after.
        assert result["held_recovered_seconds"] <= RECOVERY_SECONDS
    exactly_once(result)


def test_b_broker_restart_mid_batch_loses_nothing(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("broker_restart")
    show(capsys, delivery, "(b) broker restarted mid-batch", result)
    assert result["sent"] == BATCH
    assert result["completed_at_restart"] < BATCH, "the broker restarted after the batch was done"
    assert result["worker_alive"], "the worker process did not survive the broker restart"
    exactly_once(result)


def test_c_task_of_a_dead_worker_on_an_idle_queue_is_finished_by_another(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("idle_queue_crash")
    show(capsys, delivery, "(c) worker died holding a task, idle queue", result)
    assert result["finished_by_second_worker"]
    assert result["finished_seconds_after_second_worker"] <= RECOVERY_SECONDS
    exactly_once(result)


def test_d_delayed_tasks_run_within_a_second_of_their_delay(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("delays")
    show(capsys, delivery, "(d) delays", result)
    exactly_once(result)
    lateness = result["lateness_seconds"]
    assert len(lateness) == result["sent"]
    early = {delay: late for delay, late in lateness.items() if late < -DELAY_EARLY_SECONDS}
    late = {delay: late for delay, late in lateness.items() if late > DELAY_LATE_SECONDS}
    assert not early, f"ran before their delay (seconds early): {early}"
    assert not late, f"ran more than {DELAY_LATE_SECONDS} s after their delay: {late}"


def test_e_sigterm_lets_the_running_task_finish_and_exits_within_the_timeout(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("sigterm")
    show(capsys, delivery, "(e) SIGTERM during a task", result)
    # The task fits in the timeout: it finishes, then the worker exits (within the timeout).
    assert result["running_task_finished"]
    assert result["finish_exit_code"] == 0
    assert result["finish_exit_seconds"] <= result["shutdown_timeout_seconds"]
    # Fetched but not started: still on the broker after the exit, run by the next worker.
    assert result["waiting_run_before_exit"] == 0
    assert result["waiting_run_by_next_worker"] == 3
    if delivery.broker == "redis":
        assert result["handed_back_log"] == 1, "the unstarted messages were not put back"
    # The task outlasts the timeout: the worker exits anyway, and the task runs again later.
    assert not result["long_task_done_before_exit"]
    if delivery.broker == "redis":
        assert result["unfinished_handed_back_log"] == 1, "the cut task was not put back"
    assert result["cut_exit_code"] == 0
    limit = result["cut_shutdown_timeout_seconds"] + EXIT_OVERHEAD_SECONDS
    assert result["cut_exit_seconds"] <= limit
    exactly_once(result)


def test_f_poison_messages_are_set_aside_and_the_queue_keeps_moving(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("poison")
    show(capsys, delivery, "(f) poison messages", result)
    exactly_once(result)
    assert result["worker_alive"] and result["worker_child_restarts"] == 0
    parked = result["poison_parked"]
    assert len(parked) == len(result["poison_sent"]), parked
    assert any(reason.startswith("unreadable message") for reason in parked)
    assert "unknown task 'nobody:knows'" in parked


def test_g_a_task_blocking_its_event_loop_keeps_its_lease_and_runs_once(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("blocking_task")
    show(capsys, delivery, "(g) a task blocking its event loop for 10 idle timeouts", result)
    exactly_once(result)
    assert result["blocked_seconds"] >= 10 * result["idle_timeout_seconds"]
    assert result["starts"] == 1, "the blocking task started again elsewhere (lease lost)"
    assert result["finishes"] == 1
    assert result["duplicates_suppressed"] == 0
    assert result["reclaim_logs"] == 0, "a worker reclaimed the blocking task"
    assert result["worker_child_restarts"] == 0


def test_h_crash_states_every_task_ends_success_within_30_s_of_the_new_worker(
    crash_states: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL of the worker's process group mid-batch, shipped settings: no state is left
    running or pending, and no note is lost or written twice."""
    result = crash_states.case("crash_states")
    show(capsys, crash_states, "(h) task states after a worker SIGKILLed mid-batch", result)
    assert result["sent"] == STATES_BATCH
    assert result["completed_at_kill"] < STATES_BATCH, "the worker was killed after the batch"
    exactly_once(result)
    assert result["not_final"] == 0, (
        f"{result['not_final']} task(s) not final {STATES_FINAL_WITHIN} s after the new worker"
        f" started: {result['states']}, e.g. {result['not_final_sample']}"
    )
    assert result["states"] == {"success": STATES_BATCH}


def test_h_crash_states_kill_at_the_ack_or_the_state_write_leaves_the_state_final(
    crash_states: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """The window itself: a worker killed right after a message's ack (had the ack come before
    the state write, the state would stay `running`) or right after the final state's write
    was issued (the message must then not be acked: it runs again)."""
    result = crash_states.case("crash_window")
    show(capsys, crash_states, "(i) killed at the ack / at the state write", result)
    for point in ("ack", "write"):
        outcome = result[point]
        assert outcome["state"] == "success", f"killed at the {point}: {outcome}"
        assert outcome["completed"] == 1, f"killed at the {point}: the note is missing"
        assert outcome["rows_over_one"] == 0


def test_j_postgres_restart_mid_batch_writes_every_row_once_and_no_stale_connection_fails(
    delivery: DeliveryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    result = delivery.case("postgres_restart")
    show(capsys, delivery, "(j) PostgreSQL restarted mid-batch", result)
    assert result["sent"] == BATCH
    assert result["completed_at_restart"] < BATCH, "PostgreSQL restarted after the batch was done"
    assert result["worker_alive"] and result["worker_child_restarts"] == 0
    # Tasks that met the outage were retried; once the server was back, the pooled
    # connections it broke were replaced before use, so no task failed on one.
    assert result["failures_after_restart"] == 0, result["errors_after_restart"]
    exactly_once(result)
    # Restarted again under idle workers whose pools it emptied of live connections: the
    # next tasks get checked, fresh ones.
    assert result["idle_restart_lost"] == 0
    assert result["idle_restart_failures"] == 0, result["idle_restart_errors"]
