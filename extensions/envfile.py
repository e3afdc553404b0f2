"""Reading and rewriting a project's `.env` safely, for the copier task and migrations.

Standard library only: these run under whatever Python runs Copier.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def read_keeping_endings(path: Path) -> str:
    with path.open(encoding="utf-8", newline="") as fh:  # keep \r\n line endings
        return fh.read()


def write_keeping_mode(path: Path, text: str) -> None:
    """Replace `path` atomically, keeping its permissions (a .env often holds secrets)."""
    mode = path.stat().st_mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
