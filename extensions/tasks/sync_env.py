"""Copier task: keep the project's `.env` usable when the answers change.

Usage (copier runs it from the project's root, see `_tasks` in copier.yml):

    python sync_env.py --broker redis|rabbitmq

`.env` is the user's file: copier renders it once and never overwrites it (`_skip_if_exists`).
After `copier update --data broker=rabbitmq` it would still say `TASKIQ_BROKER_TYPE=redis`,
which the regenerated settings refuse, so the API, the worker and the tests would all fail to
start. This sets that one variable to the answered broker (a deliberate `memory` is kept) and
only names, without writing them, the variables of `.env.example` that `.env` does not set.

It also gives the project its own OPERATOR_TOKEN: on copy (`.env` renders it empty) and on the
update of a project made before the token existed. A token already set is never touched; the
value is never printed, and `.env` is made readable by its owner only.

Silent when there is nothing to do, idempotent, standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from envfile import read_keeping_endings, write_keeping_mode

_ASSIGNMENT = re.compile(
    r"^(?P<lead>\s*(?:export\s+)?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>\s*=\s*)(?P<value>.*?)"
    r"(?P<ending>\r?\n)?$",
    re.DOTALL,
)
BROKER_VARIABLE = "TASKIQ_BROKER_TYPE"
# A value the generated settings accept for any broker answer.
ALWAYS_VALID = "memory"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value.split(" #", 1)[0].strip()


def assigned_names(text: str) -> set[str]:
    """Upper-cased names of the variables a dotenv text sets (settings ignore case)."""
    return {
        match["name"].upper()
        for line in text.splitlines()
        if (match := _ASSIGNMENT.match(line)) is not None
    }


def sync_broker(text: str, broker: str) -> tuple[str, list[str]]:
    """Point TASKIQ_BROKER_TYPE at `broker` unless it already names it (or `memory`)."""
    lines = text.splitlines(keepends=True)
    done = []
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if match is None or match["name"].upper() != BROKER_VARIABLE:
            continue
        current = _unquote(match["value"]).lower()
        if current in {broker, ALWAYS_VALID}:
            continue
        lines[index] = f"{match['lead']}{match['name']}{match['eq']}{broker}{match['ending'] or ''}"
        done.append(f"{match['name']}: {current or '(empty)'} -> {broker}")
    return "".join(lines), done


TOKEN_VARIABLE = "OPERATOR_TOKEN"


def ensure_token(text: str) -> tuple[str, bool]:
    """Give an empty or missing OPERATOR_TOKEN a fresh random value."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if "\r\n" in text else "\n"
    token = secrets.token_urlsafe(32)
    for index, line in enumerate(lines):
        match = _ASSIGNMENT.match(line)
        if match is None or match["name"].upper() != TOKEN_VARIABLE:
            continue
        if _unquote(match["value"]):
            return text, False
        # `eq` swallows the line ending when the value is empty: take the ending from the line.
        eq = match["eq"].rstrip("\r\n")
        ending = line[len(line.rstrip("\r\n")) :]
        lines[index] = f"{match['lead']}{match['name']}{eq}{token}{ending}"
        return "".join(lines), True
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += newline
    lines.append(f"# Bearer token of the operator routes (see .env.example).{newline}")
    lines.append(f"{TOKEN_VARIABLE}={token}{newline}")
    return "".join(lines), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--file", default=".env")
    parser.add_argument("--example", default=".env.example")
    args = parser.parse_args(argv)
    env_path, example_path = Path(args.file), Path(args.example)
    if not env_path.is_file():
        return 0
    text = read_keeping_endings(env_path)
    new_text, done = sync_broker(text, args.broker.lower())
    new_text, token_written = ensure_token(new_text)
    if done or token_written:
        write_keeping_mode(env_path, new_text)
    if done:
        print(f"{env_path}: {'; '.join(done)} (the broker answer changed)")
    if token_written:
        os.chmod(env_path, 0o600)  # it now holds a secret
        print(f"{env_path}: wrote a new random {TOKEN_VARIABLE} (operator routes)")
    if example_path.is_file():
        example = read_keeping_endings(example_path)
        missing = sorted(assigned_names(example) - assigned_names(new_text))
        if missing:
            print(
                f"{env_path} does not set {', '.join(missing)}: their defaults apply "
                f"(see {example_path})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
