"""Logs and metrics of the API and the worker."""

from .logging import TaskLogContextMiddleware, configure_logging
from .metrics import install_api_metrics, install_worker_metrics, reset_worker_metrics_dir

__all__ = [
    "TaskLogContextMiddleware",
    "configure_logging",
    "install_api_metrics",
    "install_worker_metrics",
    "reset_worker_metrics_dir",
]
