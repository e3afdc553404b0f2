"""Prometheus metrics: GET /metrics on the API, taskiq's task metrics in the worker.

prometheus_client chooses where metric values live when it is first imported: in the process,
or in one file per process under PROMETHEUS_MULTIPROC_DIR when that variable is set. Worker
processes need the files (the one process that holds the metrics port reports them all); the
API does not. So this module imports prometheus_client only inside functions, after the worker
has set the variable, never at import time.
"""

import os
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from taskiq import AsyncBroker, TaskiqEvents, TaskiqState

from .shared_files import MULTIPROC_DIR_ENV, shared_files_registry

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram

DEFAULT_WORKER_METRICS_DIR = Path(tempfile.gettempdir()) / "taskiq-metrics"


# --- worker ------------------------------------------------------------------------------------


def worker_metrics_dir() -> Path:
    """$PROMETHEUS_MULTIPROC_DIR, or a directory under the system's temporary directory."""
    return Path(os.environ.get(MULTIPROC_DIR_ENV) or DEFAULT_WORKER_METRICS_DIR)


def reset_worker_metrics_dir(path: Path | None = None) -> Path:
    """Empty the worker's metrics directory and point PROMETHEUS_MULTIPROC_DIR at it.

    Call once in the worker's main process before it starts the worker processes (which
    inherit the variable). taskiq's middleware never removes the files, so without this a
    restarted worker would add the previous run's counts to its own. Only prometheus_client's
    `*.db` files are removed.
    """
    directory = path if path is not None else worker_metrics_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    return directory


def _use_multiprocess_values(directory: Path) -> None:
    """Make metrics created from now on in this process write to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    from prometheus_client import values

    # Something imported prometheus_client before the variable was set: switch it over once.
    # (Never replace a multiprocess class: two of them would share the same files.)
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def install_worker_metrics(
    broker: AsyncBroker, *, token: str, host: str = "127.0.0.1", port: int = 9000
) -> None:
    """Serve task metrics on `host:port` from worker processes; `port` 0 turns them off.

    A scrape must send `Authorization: Bearer <token>` (OPERATOR_TOKEN); an empty token
    refuses every scrape (401), like the API's operator routes.

    taskiq's PrometheusMiddleware (in its buffered form, task_metrics.py) is added at worker
    start-up, so the API process (which builds the same broker to send tasks) neither creates
    the task metrics nor touches the directory.
    Every worker process records into the shared directory; the first one to bind the port
    serves the sum for all of them.
    """
    if port <= 0:
        return

    async def add_prometheus_middleware(state: TaskiqState) -> None:
        if not broker.is_worker_process:
            # The in-memory broker (tests, TASKIQ_ENABLED=false) runs tasks inside the API
            # process: no worker serves metrics there, so none are written to the shared files.
            return
        _use_multiprocess_values(worker_metrics_dir())
        from .task_metrics import BufferedPrometheusMiddleware

        # Added before the broker starts its middlewares, so its startup() opens the port.
        broker.add_middlewares(
            BufferedPrometheusMiddleware(
                metrics_path=worker_metrics_dir(), server_port=port, server_addr=host, token=token
            )
        )

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, add_prometheus_middleware)


# --- API ---------------------------------------------------------------------------------------


@cache
def _http_metrics() -> tuple["Counter", "Histogram"]:
    """The API's request metrics, created once per process (however many apps are built)."""
    from prometheus_client import Counter, Histogram

    requests = Counter(
        "http_requests_total",
        "HTTP requests handled, by method, route template and status code",
        ["method", "route", "status"],
    )
    duration = Histogram(
        "http_request_duration_seconds",
        "Time to handle an HTTP request, by method and route template",
        ["method", "route"],
    )
    return requests, duration


_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled children, kept per (method, route, status): `.labels()` validates and
        # looks them up under a lock on every call, a cost per request that buys nothing here.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _record(self, method: str, route: str, status_code: int, seconds: float) -> None:
        # A client may send any token as a method: the others share one label value.
        method = method if method in _KNOWN_METHODS else "OTHER"
        key = (method, route, status_code)
        children = self._children.get(key)
        if children is None:
            requests, duration = _http_metrics()
            children = (
                requests.labels(method, route, str(status_code)),
                duration.labels(method, route),
            )
            self._children[key] = children
        count, timing = children
        count.inc()
        timing.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_code = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            self._record(scope["method"], route, status_code, time.perf_counter() - started)


def _latest_metrics() -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    registry: Any = REGISTRY
    if os.environ.get(MULTIPROC_DIR_ENV):
        # Several API processes (uvicorn --workers) share a directory: report all of them.
        registry = shared_files_registry(os.environ[MULTIPROC_DIR_ENV])
    return generate_latest(registry), CONTENT_TYPE_LATEST


metrics_router = APIRouter(tags=["observability"])


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    body, content_type = _latest_metrics()
    return Response(content=body, media_type=content_type)


def install_api_metrics(app: FastAPI) -> None:
    """Add request metrics to the app; main.py includes `metrics_router` (GET /metrics).

    The request metrics are created at the first request, so building the app (which a worker
    process does too) does not import prometheus_client.
    """
    app.add_middleware(HttpMetricsMiddleware)
