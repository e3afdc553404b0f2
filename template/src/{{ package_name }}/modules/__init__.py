"""Feature modules: one package each, holding its router, service, tasks and models."""

import importlib
import importlib.util
import pkgutil


def import_feature_modules(kind: str) -> list[str]:
    """Import `<feature>.<kind>` (e.g. "tasks", "models") of every feature; return their names.

    Discovery instead of a hand-kept list means a new feature's tasks or models
    can't be forgotten by the worker or by Alembic.
    """
    imported = []
    for feature in pkgutil.iter_modules(__path__):
        name = f"{__name__}.{feature.name}.{kind}"
        if feature.ispkg and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            imported.append(name)
    return sorted(imported)
