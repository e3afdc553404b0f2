"""Reading and rewriting a project's `.env` safely, for the copier task and migrations.

Standard library only: these run under whatever Python runs Copier.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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


def rewrite_env_files(
    files: list[str], rewrite: Callable[[str], tuple[str, list[str]]], label: str, idle: str
) -> None:
    """Apply `rewrite` (text -> new text, what it did) to each env file (default `.env`),
    keeping line endings and mode; print one line per file: `label: file: what was done`."""
    for name in files or [".env"]:
        path = Path(name)
        if not path.is_file():
            print(f"{label}: {name}: not found, {idle}")
            continue
        text = read_keeping_endings(path)
        new_text, done = rewrite(text)
        if new_text != text:
            write_keeping_mode(path, new_text)
        print(f"{label}: {name}: {'; '.join(done) if done else idle}")
