"""The worker's main process handles a stop signal once: taskiq's own handler can deadlock.

taskiq's process manager asks for a shutdown by putting an action on a multiprocessing queue
from its signal handler. A second signal that lands while the first handler is still inside
`Queue.put` runs the handler again in the same thread, which then waits for the queue's lock,
held by the interrupted put, forever: the main process never exits, and compose or Kubernetes
kill it only when the grace period ends (taskiq issue #593). Two signals are common: `uv run`
and watchfiles forward one while the terminal's Ctrl-C sends another, and a stop that signals
the whole process group reaches the main process besides the one it was sent to.
"""

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from taskiq.cli.worker import process_manager

SignalHandler = Callable[[int, Any], None]
_PATCHED = "_handles_each_signal_once"


def handle_stop_signals_once() -> None:
    """Make the main process's handlers safe, before taskiq installs them.

    A shutdown is asked for once: the process manager then stops the worker processes, and
    those see Ctrl-C themselves (a second one there still hard-kills them). A signal that comes
    while a handler runs is dropped instead of re-entering it.
    """
    make_handler = process_manager.get_signal_handler
    if getattr(make_handler, _PATCHED, False):
        return

    def get_signal_handler(
        action_queue: Any, action_to_send: process_manager.ProcessActionBase
    ) -> SignalHandler:
        handler = make_handler(action_queue, action_to_send)
        once = isinstance(action_to_send, process_manager.ShutdownAction)
        busy = done = False

        def handle(signum: int, frame: FrameType | None) -> None:
            nonlocal busy, done
            if busy or done:
                return
            busy = True
            try:
                handler(signum, frame)
            finally:
                busy, done = False, once

        return handle

    setattr(get_signal_handler, _PATCHED, True)
    process_manager.get_signal_handler = get_signal_handler


def ignore_stop_signals() -> None:
    """Once the worker has stopped: later stop signals must not turn its exit into a kill.

    Python puts the default handlers back while the interpreter finalizes, so a SIGTERM still
    arriving then (the rest of a burst) would end the process by the signal (exit status
    143 in compose and Kubernetes) instead of the status of the stop that already happened.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
