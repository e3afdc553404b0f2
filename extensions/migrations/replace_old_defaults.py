"""Copier migration: move settings in the project's `.env` off an old default to the new one.

Usage (copier runs it from the project's root, see `_migrations` in copier.yml):

    python replace_old_defaults.py NAME=OLD=NEW [NAME=OLD=NEW ...] [--file PATH ...]

A new project's `.env` is a copy of `.env.example`, so it holds every default of its release,
and Copier never rewrites `.env` after the first copy (`_skip_if_exists`: it holds the user's
secrets). When a release changes a default, a project would keep the old one for ever. This
rewrites NAME only where its value is still exactly OLD (quotes and spaces aside, 600 = 600.0):
a value the user chose stays. A comment line above says what was done.

Idempotent: a second run finds NEW, not OLD, and changes nothing. `export` prefixes, line
endings and file permissions are kept. Standard library only, for any Python that runs Copier.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from envfile import rewrite_env_files

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _same(value: str, old: str) -> bool:
    value = value.strip().strip("'\"").strip()
    if value == old:
        return True
    try:
        return float(value) == float(old)
    except ValueError:
        return False


def replace_in_text(
    text: str, changes: list[tuple[str, str, str]], note: str
) -> tuple[str, list[str]]:
    """Apply `changes` (name, old, new) to the text of an env file; the new text, what was done."""
    lines = text.splitlines(keepends=True)
    done: list[str] = []
    for name, old, new in changes:
        pattern = re.compile(rf"^(?P<lead>\s*(?:export\s+)?{re.escape(name)}\s*=\s*)(?P<value>.*)$")
        for index, line in enumerate(lines):
            body = line.rstrip("\r\n")
            match = pattern.match(body)
            if match is None or not _same(match["value"], old):
                continue
            ending = line[len(body) :] or "\n"
            comment = f"# {note}: {name} was {old}, the old default; the new default is {new}."
            lines[index] = f"{comment}{ending}{match['lead']}{new}{line[len(body) :]}"
            done.append(f"{name} {old} -> {new}")
    return "".join(lines), done


def _change(value: str) -> tuple[str, str, str]:
    parts = value.split("=")
    if len(parts) != 3 or not _NAME.match(parts[0]) or not parts[1] or parts[1] == parts[2]:
        raise argparse.ArgumentTypeError(f"expected NAME=OLD=NEW, got {value!r}")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("changes", nargs="+", type=_change, metavar="NAME=OLD=NEW")
    parser.add_argument("--file", action="append", dest="files", metavar="PATH")
    args = parser.parse_args(argv)
    # Copier passes the migration's version in the environment (VERSION_CURRENT).
    version = os.environ.get("VERSION_CURRENT", "")
    note = f"taskiq-template migration {version}".rstrip()
    rewrite_env_files(
        args.files,
        lambda text: replace_in_text(text, args.changes, note),
        f"{note} (old defaults)",
        "nothing to change",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
