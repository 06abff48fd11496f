"""Stopping a run cleanly on SIGTERM or Ctrl-C.

Python turns SIGINT into ``KeyboardInterrupt`` but lets SIGTERM (what cron,
systemd, Kubernetes and ``kill`` send) end the process without unwinding, so a
run would neither roll back nor record why it stopped. :func:`interruptible`
makes both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the
main thread: the run's ``except BaseException`` rolls the run back and
marks its ledger row ``failed`` ("interrupted by SIGTERM"), and the CLI exits
with 128 + the signal number. A second signal while that cleanup runs ends the
process at once (the next run then marks the row ``abandoned``; nothing partial
is visible either way, the transaction dies with the connection), even while
the cleanup waits inside a database driver: Python runs a signal handler only
between bytecodes, and SQLite's busy wait (for a write lock another process
holds) returns only after ``busy_timeout_seconds``, so after the first signal a
watcher thread, woken through the signal wakeup fd, ends the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from batch_scorer.errors import Interrupted

log = logging.getLogger(__name__)

__all__ = ["HANDLED", "Interrupted", "interruptible"]

HANDLED = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` in the main thread.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    watcher = _SecondSignal()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            _exit_now(signum)
        received.append(signum)
        watcher.start()
        raise Interrupted(signum)

    previous: dict[int, Any] = {}
    for signum in HANDLED:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        watcher.stop()
        for signum, old in previous.items():
            signal.signal(signum, old)


def _exit_now(signum: int) -> None:
    # Second signal during cleanup: the user means it.
    log.error("second %s while stopping: exiting now", signal.Signals(signum).name)
    os._exit(128 + signum)


class _SecondSignal:
    """After the first signal: a thread that ends the process when a second one arrives,
    whatever the main thread is blocked in (the C-level handler writes the signal number
    to the wakeup fd at once; the Python-level handler waits for the main thread)."""

    def __init__(self) -> None:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1

    def start(self) -> None:
        if self._pair is not None:
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread after all: the handler alone must do
            reader.close()
            writer.close()
            return
        self._pair = (reader, writer)
        threading.Thread(target=self._watch, args=(reader,), name="bs-second-signal", daemon=True).start()

    @staticmethod
    def _watch(reader: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := reader.recv(16):
                for signum in data:
                    if signum in HANDLED:
                        _exit_now(signum)

    def stop(self) -> None:
        if self._pair is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        reader, writer = self._pair
        self._pair = None
        with contextlib.suppress(OSError):
            reader.shutdown(socket.SHUT_RDWR)  # the watcher's recv returns
        writer.close()
        reader.close()
