"""A progress bar on stderr: redrawn in place on a terminal, one line at the end otherwise."""

import sys
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, total: int, *, width: int = 30, stream: TextIO | None = None):
        self.label = label
        self.total = max(total, 1)
        self.width = width
        self.stream = stream if stream is not None else sys.stderr
        self._shown = -1

    def render(self, done: int) -> str:
        done = min(max(done, 0), self.total)
        filled = self.width * done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        return f"{self.label:<14} [{bar}] {done}/{self.total}"

    def update(self, done: int) -> None:
        if done != self._shown and self.stream.isatty():
            self.stream.write("\r" + self.render(done))
            self.stream.flush()
        self._shown = done

    def close(self) -> None:
        self.stream.write(("\r" if self.stream.isatty() else "") + self.render(self._shown) + "\n")
        self.stream.flush()
