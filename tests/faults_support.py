"""Shared tools for the fault tests: real subprocesses, their log lines, and the
PostgreSQL sessions they open (found by ``application_name``)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from batch_scorer.storage.db import create_engine


class Run:
    """A ``batch-scorer`` subprocess whose stderr lines are collected as they come."""

    def __init__(self, cfg: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ, BATCH_SCORER_PROGRESS_SECONDS="0", **(env or {}))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batch_scorer.cli", "--config", str(cfg), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> str:
        """Block until a stderr line matches; fail (and kill the run) after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._new_line.wait(min(left, 0.2))
        self.proc.kill()
        raise AssertionError("the run never logged the expected line:\n" + self.stderr)

    def wait_for_rows(self, timeout: float = 60.0) -> None:
        """Until the run has scored and written some rows (progress lines)."""
        self.wait_for(lambda ln: " rows read, " in ln and ": 0 rows read" not in ln, timeout)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the process to end; returns its exit code."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the run did not end within {timeout}s:\n{self.stderr}") from None
        self._reader.join(timeout=10)
        return code


def app_url(url: str, name: str) -> str:
    """The URL with ``application_name`` set, so the test can find the run's sessions."""
    return sa.engine.make_url(url).update_query_dict({"application_name": name}).render_as_string(
        hide_password=False
    )


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def sessions(base_url: str, app: str) -> list[dict[str, object]]:
    """The PostgreSQL sessions of one application: pid, state, has_xid, query, client_port, running_s."""
    engine = create_engine(base_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT pid, state, backend_xid IS NOT NULL AS has_xid, query, client_port, "
                    "extract(epoch FROM clock_timestamp() - query_start) AS running_s "
                    "FROM pg_stat_activity WHERE application_name = :app"
                ),
                {"app": app},
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def terminate(base_url: str, pid: int) -> bool:
    """``pg_terminate_backend`` one session, as a DBA (or a failover) would."""
    engine = create_engine(base_url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar())
    finally:
        engine.dispose()


def ok(cfg: Path, *args: str) -> str:
    """Run a CLI command in-process (set-up steps need no real process); assert exit 0."""
    from tests.helpers import cli_run

    result = cli_run(cfg, *args)
    assert result.exit_code == 0, result.output
    return result.output


def own_tcp_ports() -> set[int]:
    """The local ports of this process's TCP sockets (Linux /proc): a session whose
    ``client_port`` is one of them is this process's, whichever library opened it."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class CountedSessions:
    """What :func:`run_counting_sessions` saw: every connection SQLAlchemy's pools opened for
    the run (backend pids), every session of the run seen while jobs reported progress, and
    those of them that were this process's (by client port: SQLAlchemy's and e.g. ADBC's)."""

    results: list[Any]
    opened: set[int]
    live: set[int]
    ours: set[int]


def run_counting_sessions(cfg: Path, base_url: str, app: str, names: list[str]) -> CountedSessions:
    """``api.run`` of ``names`` (all at once), counting the run's PostgreSQL sessions (those with
    ``application_name`` ``app``): see :class:`CountedSessions`."""
    from batch_scorer import api
    from tests.helpers import AS_OF

    seen = CountedSessions([], set(), set(), set())

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if dbapi_conn.info.parameter_status("application_name") == app:  # the run's, not the test's
            seen.opened.add(dbapi_conn.info.backend_pid)

    def on_progress(*_: object) -> None:
        now = sessions(base_url, app)
        mine = own_tcp_ports()
        seen.live.update(int(s["pid"]) for s in now)
        seen.ours.update(int(s["pid"]) for s in now if s["client_port"] in mine)

    sa.event.listen(sa.pool.Pool, "connect", on_connect)
    try:
        seen.results = list(api.run(cfg, names, as_of=AS_OF, parallel=len(names), on_progress=on_progress))
    finally:
        sa.event.remove(sa.pool.Pool, "connect", on_connect)
    return seen
