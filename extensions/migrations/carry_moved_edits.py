"""Copier migration: carry the user's edits inside moved files to the files' new places.

Usage (copier runs it from the project's root, see `_migrations` in copier.yml):

    python carry_moved_edits.py before OLD=NEW [OLD=NEW ...]   (folders or files; {pkg} is the
                                                                package name)
    python carry_moved_edits.py after

`copier update` computes the user's changes against the old release and applies them where the
files were: an edit inside a file that the new release moved has nowhere to go and is dropped
without a word (git apply skips a patch for a missing file). So, before the update, this
renders the old release with the project's answers and keeps, for every moved file the user
changed, both versions under `.copier-moved-edits/`; after the update it three-way merges each
edit into the file at its new place (`git merge-file`, as copier does with its own conflicts):
what merges cleanly is applied, what overlaps the new release's changes is left as conflict
markers in the file. Files of the user's own inside a moved folder move along.

Standard library, plus Copier itself (this runs under the Python that runs Copier) for the
render of the old release. Idempotent: a project with no edits in moved files gets no patch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

STASH = Path(".copier-moved-edits")
ANSWERS = Path(".copier-answers.yml")


def _answers() -> dict[str, object]:
    import yaml  # Copier's own dependency

    return yaml.safe_load(ANSWERS.read_text(encoding="utf-8")) or {}


def _render_old_release(answers: dict[str, object], dst: Path) -> None:
    import copier

    data = {k: v for k, v in answers.items() if not k.startswith("_")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copier.run_copy(
            str(answers["_src_path"]),
            str(dst),
            data=data,
            vcs_ref=str(answers["_commit"]),
            defaults=True,
            unsafe=True,
            quiet=True,
            skip_tasks=True,
        )


def _files(old: Path) -> list[Path]:
    paths = [old] if old.is_file() else sorted(old.rglob("*"))
    return [p for p in paths if p.is_file() and "__pycache__" not in p.parts]


def _keep_edits(moves: dict[str, str], pristine: Path) -> list[str]:
    """Keep, for each moved file the user changed, the old release's version and the user's
    under STASH/<new path>.{base,mine}; move the user's own files along (git mv), which the
    update then carries like any file the user added. Returns the new paths kept."""
    kept = []
    for old, new in moves.items():
        for path in _files(Path(old)):
            target = Path(new) / path.relative_to(old) if Path(old).is_dir() else Path(new)
            base = pristine / path
            if not base.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                subprocess.run(["git", "mv", "-k", str(path), str(target)], check=False)
                continue
            if path.read_bytes() == base.read_bytes():
                continue
            stash = STASH / target
            stash.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base, stash.with_name(stash.name + ".base"))
            shutil.copyfile(path, stash.with_name(stash.name + ".mine"))
            kept.append(target.as_posix())
    return kept


def before(pairs: dict[str, str]) -> None:
    answers = _answers()
    # Migration commands don't see the answers: the package name comes from the answers file.
    package = str(answers.get("package_name", ""))
    moves = {old.format(pkg=package): new.format(pkg=package) for old, new in pairs.items()}
    if not package or not any(Path(old).exists() for old in moves):
        return  # already in the new layout
    with tempfile.TemporaryDirectory(prefix="copier-old-release-") as tmp:
        _render_old_release(answers, Path(tmp))
        kept = _keep_edits(moves, Path(tmp))
    if kept:
        print(f"Your edits in {len(kept)} moved file(s) are kept in {STASH}/ for after the update.")


def after() -> int:
    """Three-way merge of each kept edit into the file's new version (as copier merges)."""
    if not STASH.is_dir():
        return 0
    conflicts = []
    for base in sorted(STASH.rglob("*.base")):
        target = base.relative_to(STASH).with_suffix("")
        mine = base.with_suffix(".mine")
        if not target.is_file():  # the new release dropped the file: keep the user's
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mine, target)
            continue
        labels = ["-L", "after updating", "-L", "before updating (0.1.0)", "-L", "your edit"]
        merged = subprocess.run(
            ["git", "merge-file", *labels, str(target), str(base), str(mine)], check=False
        )
        if merged.returncode != 0:
            conflicts.append(target.as_posix())
    shutil.rmtree(STASH)
    if conflicts:
        print(
            "Your edits in these moved files overlap the new release's changes; resolve the "
            "conflict markers in: " + ", ".join(conflicts),
            file=sys.stderr,
        )
    else:
        print("Your edits inside moved files were carried to their new places.")
    return 0


def main(argv: list[str]) -> int:
    stage, *pairs = argv
    if stage == "before":
        before(dict(pair.split("=", 1) for pair in pairs))
        return 0
    if stage == "after":
        return after()
    print(f"unknown stage {stage!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
