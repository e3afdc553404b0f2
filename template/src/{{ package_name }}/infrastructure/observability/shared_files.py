"""Reading the metric files that processes share (PROMETHEUS_MULTIPROC_DIR) for a scrape.

Like the rest of this package, prometheus_client is imported only inside functions.
"""

import glob
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector

# Where prometheus_client keeps the values of processes that share them.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class SettledFilesCollector:
    """prometheus_client's MultiProcessCollector, minus the files still being created.

    A process creates its file empty and sizes it a moment later; a scrape that reads it in
    between fails on the missing header (struct.error), and the whole scrape answers 500.
    Such a file holds no value yet, so it is left out until it has a size.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterable["Metric"]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = [path for path in glob.glob(os.path.join(self.directory, "*.db")) if _size(path)]
        metrics: Iterable[Metric] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True
        )
        return metrics


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # removed meanwhile (a worker's start-up empties the directory)
        return 0


def shared_files_registry(directory: str) -> "CollectorRegistry":
    """A registry reporting the values of every process writing into `directory`."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(cast("Collector", SettledFilesCollector(directory)))
    return registry
