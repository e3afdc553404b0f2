"""Copier migration: rename variables in the project's `.env`.

Usage (copier runs it from the project's root, see `_migrations` in copier.yml):

    python rename_env_vars.py OLD=NEW [OLD=NEW ...] [--file PATH ...]

Copier never rewrites `.env` after the first copy (`_skip_if_exists`: it holds the user's
secrets), and the generated settings ignore unknown variables, so a renamed setting left under
its old name in `.env` would silently fall back to its default. This script renames it instead.

Idempotent: a second run finds no old name and changes nothing. When the new name is already
set, the old line is commented out rather than overriding the user's value. Values, comments,
`export` prefixes, line endings and file permissions are kept. Standard library only, for any
Python that runs Copier.
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


def _assignment(name: str) -> re.Pattern[str]:
    """An uncommented `NAME=...` line, with optional indentation and `export`."""
    return re.compile(rf"^(?P<lead>\s*(?:export\s+)?){re.escape(name)}(?P<rest>\s*=.*)$", re.DOTALL)


def rename_in_text(text: str, renames: dict[str, str], note: str) -> tuple[str, list[str]]:
    """Apply `renames` to the text of an env file; return the new text and what was done."""
    lines = text.splitlines(keepends=True)
    done: list[str] = []
    for old, new in renames.items():
        old_re, new_re = _assignment(old), _assignment(new)
        new_is_set = any(new_re.match(line) for line in lines)
        for index, line in enumerate(lines):
            match = old_re.match(line)
            if match is None:
                continue
            body = line.rstrip("\r\n")
            ending = line[len(body) :]
            if new_is_set:
                lines[index] = f"# {body}  # {note}: {new} is already set{ending}"
                done.append(f"commented out {old} ({new} is already set)")
            else:
                lines[index] = f"{match['lead']}{new}{match['rest']}"
                done.append(f"renamed {old} -> {new}")
    return "".join(lines), done


def _pair(value: str) -> tuple[str, str]:
    old, sep, new = value.partition("=")
    if not sep or not _NAME.match(old) or not _NAME.match(new) or old == new:
        raise argparse.ArgumentTypeError(f"expected OLD=NEW variable names, got {value!r}")
    return old, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("renames", nargs="+", type=_pair, metavar="OLD=NEW")
    parser.add_argument("--file", action="append", dest="files", metavar="PATH")
    args = parser.parse_args(argv)
    # Copier passes the migration's version in the environment (VERSION_CURRENT).
    note = f"taskiq-template migration {os.environ.get('VERSION_CURRENT', '')}".rstrip()
    rewrite_env_files(
        args.files,
        lambda text: rename_in_text(text, dict(args.renames), note),
        note,
        "nothing to rename",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
