"""Jinja extensions for the template: answer-validating filters and the derived context.

Everything that more than one file needs to know about the answers is computed here once,
so templates say ``{% if needs_redis %}`` instead of repeating compound conditions.
The hook runs on every render (including the replay of an old version during
``copier update``): keep it pure and tolerant of missing answers.
"""

from __future__ import annotations

import keyword
import re
import sys
from typing import Any

from copier_template_extensions import ContextHook
from jinja2.ext import Extension

_SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_IDENTIFIER_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")

# Names a generated package must not take: they would shadow the standard library or an
# import the project itself makes.
_DEPENDENCY_MODULES = frozenset(
    {
        "alembic",
        "aio_pika",
        "aiosmtplib",
        "aiosqlite",
        "asyncpg",
        "fastapi",
        "httpx",
        "jinja2",
        "orjson",
        "pydantic",
        "pydantic_settings",
        "pytest",
        "redis",
        "sqlalchemy",
        "starlette",
        "taskiq",
        "taskiq_aio_pika",
        "taskiq_redis",
        "tests",
        "uvicorn",
        "migrations",
        "src",
        "prometheus_client",
        "watchfiles",
    }
)


def slugify(value: str) -> str:
    """Turn a free-form project name into a lowercase, dash-separated slug."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-")
    return re.sub(r"^[0-9-]+", "", slug)


def is_valid_slug(value: str) -> bool:
    return bool(_SLUG_RE.match(str(value)))


def is_valid_identifier(value: str) -> bool:
    return bool(_IDENTIFIER_RE.match(str(value))) and not keyword.iskeyword(str(value))


def is_reserved_name(value: str) -> bool:
    return str(value) in sys.stdlib_module_names or str(value) in _DEPENDENCY_MODULES


def is_valid_email(value: str) -> bool:
    return bool(_EMAIL_RE.match(str(value)))


class TemplateFilters(Extension):
    """Filters used by copier.yml defaults and validators."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        environment.filters.update(
            slugify=slugify,
            is_valid_slug=is_valid_slug,
            is_valid_identifier=is_valid_identifier,
            is_reserved_name=is_reserved_name,
            is_valid_email=is_valid_email,
        )


# Pinned lower bounds of the libraries whose behaviour the generated code relies on.
_BASE_DEPENDENCIES = [
    "alembic>=1.14",
    "fastapi>=0.115",
    "orjson>=3.10",
    "pydantic>=2.9",
    "pydantic-settings>=2.6",
    "sqlalchemy[asyncio]>=2.0.36",
    "aiosqlite>=0.20",
    "asyncpg>=0.30",
    "prometheus-client>=0.21",  # the API's GET /metrics (observability/metrics.py)
    "taskiq[metrics]>=0.13,<0.14",  # [metrics]: the worker's PrometheusMiddleware
    "uvicorn[standard]>=0.32",
]
_REDIS_DEPENDENCIES = ["redis>=5.2", "taskiq-redis>=1.2.4,<1.3"]
_RABBITMQ_DEPENDENCIES = ["aio-pika>=9.5", "taskiq-aio-pika>=0.6.1,<0.7"]
_EMAIL_DEPENDENCIES = ["aiosmtplib>=3.0", "email-validator>=2.2", "jinja2>=3.1"]
# anyio: shielded writes of cron run records; tzdata: cron time zones where the OS has none.
_SCHEDULER_DEPENDENCIES = ["anyio>=4.4", "tzdata>=2024.1"]
_DEV_DEPENDENCIES = [
    "httpx>=0.28",
    "import-linter>=2.1",  # the layers contract in pyproject.toml (lint-imports)
    "mypy>=1.13",
    "pytest>=8.3",
    "pytest-asyncio>=0.24",
    "ruff>=0.8",
    # tests/unit/test_api_schema.py: every route keeps its OpenAPI contract.
    "schemathesis>=4.2,<5",
]
_EMAIL_DEV_DEPENDENCIES = ["aiosmtpd>=1.4"]


def _architecture(answers: dict[str, Any], needs_redis: bool) -> dict[str, list[dict[str, str]]]:
    """The processes and stores of a combination and who talks to whom (the README's diagram)."""
    broker = answers.get("broker", "redis")
    has_results = answers.get("result_backend", "redis") != "none"
    include_scheduler = bool(answers.get("include_scheduler", True))
    include_email = bool(answers.get("include_email", False))
    # What each store holds here; one Redis server holds every Redis role.
    redis_roles = (["task stream"] if broker == "redis" else []) + ["task states"]
    if has_results:
        redis_roles.append("results")
    if include_scheduler:
        redis_roles.append("schedules")
    postgres_roles = ["rows"] + ([] if needs_redis else ["task states"])
    if include_scheduler and not needs_redis:
        postgres_roles.append("schedules")
    broker_id = "redis" if broker == "redis" else "rabbitmq"
    state_store = "redis" if needs_redis else "postgres"

    nodes = [
        {"id": "client", "label": "HTTP clients", "shape": "external"},
        {"id": "api", "label": "API (FastAPI)", "shape": "process"},
        {"id": "worker", "label": "Taskiq worker", "shape": "process"},
    ]
    if include_scheduler:
        nodes.append({"id": "scheduler", "label": "Taskiq scheduler (one)", "shape": "process"})
    if broker == "rabbitmq":
        nodes.append({"id": "rabbitmq", "label": "RabbitMQ: task queue", "shape": "store"})
    if needs_redis:
        nodes.append({"id": "redis", "label": "Redis: " + ", ".join(redis_roles), "shape": "store"})
    nodes.append(
        {"id": "postgres", "label": "PostgreSQL: " + ", ".join(postgres_roles), "shape": "store"}
    )
    if include_email:
        nodes.append({"id": "smtp", "label": "SMTP server", "shape": "external"})

    edges = [
        {"source": "client", "label": "HTTP", "target": "api"},
        {"source": "api", "label": "sends tasks", "target": broker_id},
        {"source": "worker", "label": "takes and acks tasks", "target": broker_id},
        {"source": "api", "label": "reads, writes", "target": "postgres"},
        {"source": "worker", "label": "reads, writes", "target": "postgres"},
    ]
    if needs_redis:  # otherwise the states are rows like the others
        edges.append({"source": "api", "label": "task states, cancels", "target": state_store})
        edges.append({"source": "worker", "label": "task states", "target": state_store})
    if has_results:
        edges.append({"source": "worker", "label": "results", "target": "redis"})
    if include_scheduler:
        edges.append({"source": "scheduler", "label": "sends due tasks", "target": broker_id})
        edges.append({"source": "scheduler", "label": "reads schedules", "target": state_store})
    if include_email:
        edges.append({"source": "worker", "label": "sends email", "target": "smtp"})
    return {"architecture_nodes": nodes, "architecture_edges": edges}


# Settings that are secrets: in deploy/kubernetes's Secret, never its ConfigMap.
# OPERATOR_TOKEN: the bearer credential of the operator routes (and of /metrics).
_SECRET_SETTINGS = ["DATABASE_URL", "OPERATOR_TOKEN"]


def _kubernetes(answers: dict[str, Any], needs_redis: bool) -> dict[str, Any]:
    """Names the Kubernetes manifests share with the generated code (deploy/kubernetes/)."""
    broker = answers.get("broker", "redis")
    secret_keys = list(_SECRET_SETTINGS)
    if needs_redis:
        secret_keys.append("TASKIQ_REDIS_PASSWORD")
    if broker == "rabbitmq":
        secret_keys += ["TASKIQ_RABBITMQ_USER", "TASKIQ_RABBITMQ_PASSWORD"]
    if answers.get("include_email", False):
        secret_keys.append("SMTP_PASSWORD")
    # Read by KEDA only (TriggerAuthentication), not by the code: the scaler takes one URL.
    keda_secret_keys = ["KEDA_RABBITMQ_URL"] if broker == "rabbitmq" else []
    # The stream, its consumer group and the queue are all TASKIQ_QUEUE_NAME (the slug by
    # default); the Redis stream broker names its consumer group after the queue.
    queue = str(answers.get("project_slug") or slugify(str(answers.get("project_name", ""))))
    if broker == "redis":
        trigger = {
            "type": "redis-streams",
            "stream": queue,
            "consumer_group": queue,
            "database_index": int(answers.get("redis_db", 3) or 0),
        }
    else:
        trigger = {"type": "rabbitmq", "queue": queue}
    return {
        "kubernetes_secret_keys": secret_keys,
        "kubernetes_keda_secret_keys": keda_secret_keys,
        "keda_trigger": trigger,
    }


def derive(answers: dict[str, Any]) -> dict[str, Any]:
    """Compute every value derived from the answers (pure; used by the hook and by tests)."""
    broker = answers.get("broker", "redis")
    result_backend = answers.get("result_backend", "redis")
    include_email = bool(answers.get("include_email", False))
    python_version = str(answers.get("python_version", "3.12"))

    needs_redis = broker == "redis" or result_backend == "redis"
    needs_rabbitmq = broker == "rabbitmq"

    dependencies = list(_BASE_DEPENDENCIES)
    if needs_redis:
        dependencies += _REDIS_DEPENDENCIES
    if needs_rabbitmq:
        dependencies += _RABBITMQ_DEPENDENCIES
    if include_email:
        dependencies += _EMAIL_DEPENDENCIES
    if bool(answers.get("include_scheduler", True)):
        dependencies += _SCHEDULER_DEPENDENCIES
    dev_dependencies = list(_DEV_DEPENDENCIES)
    if include_email:
        dev_dependencies += _EMAIL_DEV_DEPENDENCIES

    services = ["postgres"]
    if needs_redis:
        services.append("redis")
    if needs_rabbitmq:
        services.append("rabbitmq")

    return {
        "needs_redis": needs_redis,
        "needs_rabbitmq": needs_rabbitmq,
        "has_result_backend": result_backend != "none",
        # Task states in Redis: an idle worker needs no database, so it imports SQLAlchemy with
        # its first database task. Without Redis, workers poll cancels from the database.
        "workers_load_database_lazily": needs_redis,
        # The system-wide email fan-out needs someone to write to: a minimal users table.
        "include_users": include_email,
        "dependencies": sorted(dependencies, key=str.lower),
        "dev_dependencies": sorted(dev_dependencies, key=str.lower),
        "services": services,
        "python_target": "py" + python_version.replace(".", ""),
        "redis_db_default": int(answers.get("redis_db", 3) or 0),
        **_architecture(answers, needs_redis),
        **_kubernetes(answers, needs_redis),
    }


class ContextUpdater(ContextHook):
    """Adds the derived values to every render's context."""

    def hook(self, context: dict[str, Any]) -> None:  # type: ignore[override]
        context.update(derive(context))
