"""Stopping a run cleanly on SIGTERM or Ctrl-C.

Python turns SIGINT into ``KeyboardInterrupt`` but lets SIGTERM (what cron,
systemd, Kubernetes and ``kill`` send) end the process without unwinding, so a
run would neither roll back nor record why it stopped. :func:`interruptible`
makes both signals raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the
main thread: the run's ``except BaseException`` rolls the run back and
marks its ledger row ``failed`` ("interrupted by SIGTERM"), and the CLI exits
with 128 + the signal number. A second signal while that cleanup runs ends the
process at once (the next run then marks the row ``abandoned``; nothing partial
is visible either way, the transaction dies with the connection).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
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

    def handler(signum: int, _frame: FrameType | None) -> None:
        if received:
            # Second signal during cleanup: the user means it.
            log.error("second %s while stopping: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        received.append(signum)
        raise Interrupted(signum)

    previous: dict[int, Any] = {}
    for signum in HANDLED:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
