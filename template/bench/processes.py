"""The worker and API processes the benchmark starts, each in a process group of its own."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

# The directory holding this package, for the child processes' import path.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A child process whose output goes to a log file (shown when it fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        path = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
        env = {**env, "PYTHONPATH": path}
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self._process.poll() is not None:
            raise RuntimeError(f"{self.log_path.stem} exited; its log:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole group (a worker's processes too), then SIGKILL what is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
