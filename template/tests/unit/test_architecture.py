"""The layers contract (pyproject.toml, [tool.importlinter]): imports go one way.

Entry points (main, worker, scheduler) -> features.py -> modules/ -> infrastructure/. A feature
may use anything of the template's platform; the platform never imports a feature, so `copier
update` can replace it without knowing what your modules hold.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.processes
def test_imports_follow_the_layers() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=PROJECT_ROOT,
        # src/ as pytest sees it, also where the project itself is not installed.
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout, proc.stdout
