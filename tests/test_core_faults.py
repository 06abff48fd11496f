"""The core guarantees the hard way: SIGKILL mid-write, two runs at once, a
pinned pickle that must never be unpickled. Real processes, real databases."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import pytest

from tests.faults_support import Run
from tests.helpers import (
    AS_OF,
    features_frame,
    job,
    load_table,
    query,
    save_model,
    train,
    write_config,
)

BIG = 50_000


def _run_until_not_locked(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # After SIGKILL the server may take a moment to notice the dead session.
    for _ in range(20):
        done = subprocess.run(
            [sys.executable, "-m", "batch_scorer.cli", "--config", str(cfg), *args],
            capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 3:
            return done
        time.sleep(0.5)
    return done


def _big_job(tmp_path: Path, url: str) -> Path:
    load_table(url, features_frame(BIG, seed=9))
    save_model(train("forest"), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(chunk_size=1_000, pass_through=["note"])})


def test_killed_run_leaves_no_rows_and_next_run_marks_it_abandoned(tmp_path: Path, db_url: str) -> None:
    cfg = _big_job(tmp_path, db_url)
    as_of = ["--as-of", AS_OF.isoformat()]

    run = Run(cfg, "run", "j", *as_of)
    run.wait_for_rows()
    assert run.proc.poll() is None, "the run finished before it could be killed"
    run.proc.send_signal(signal.SIGKILL)
    run.finish(timeout=30)

    # Nothing of the killed run is visible, and its ledger row is still 'running'.
    assert query(db_url, "SELECT count(*) FROM predictions") == [(0,)]
    assert query(db_url, "SELECT status FROM scoring_runs") == [("running",)]

    done = _run_until_not_locked(cfg, "run", "j", *as_of)
    assert done.returncode == 0, done.stderr
    assert query(db_url, "SELECT run_id, status FROM scoring_runs ORDER BY run_id") == [
        (1, "abandoned"), (2, "succeeded"),
    ]
    assert query(db_url, "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) "
                 "FROM predictions") == [(BIG, BIG, 2, 2)]


def test_killed_rerun_keeps_the_published_set_whole(tmp_path: Path, db_url: str) -> None:
    cfg = _big_job(tmp_path, db_url)
    as_of = ["--as-of", AS_OF.isoformat()]
    first = _run_until_not_locked(cfg, "run", "j", *as_of)
    assert first.returncode == 0, first.stderr

    run = Run(cfg, "run", "j", *as_of)
    run.wait_for_rows()
    run.proc.send_signal(signal.SIGKILL)
    run.finish(timeout=30)
    # Readers still see exactly the first run's rows: the re-run is invisible.
    assert query(db_url, "SELECT count(*), min(run_id), max(run_id) FROM predictions") == [(BIG, 1, 1)]
    if db_url.startswith("sqlite"):
        assert query(db_url, "PRAGMA integrity_check") == [("ok",)]


def test_two_simultaneous_runs_one_scores_one_exits_3(tmp_path: Path, db_url: str) -> None:
    cfg = _big_job(tmp_path, db_url)
    runs = [Run(cfg, "run", "j", "--as-of", AS_OF.isoformat()) for _ in range(2)]
    codes = [r.finish(timeout=180) for r in runs]
    assert sorted(codes) == [0, 3], [r.stderr for r in runs]
    loser = runs[codes.index(3)]
    # Names the holder's run, or says it is just starting (lock taken, ledger row not yet).
    assert "is already being scored by" in loser.stderr and "this run was skipped" in loser.stderr
    assert query(db_url, "SELECT count(*), count(DISTINCT entity_id) FROM predictions") == [(BIG, BIG)]
    # The loser's attempt is recorded as skipped, naming the holder (runs shows why).
    assert query(db_url, "SELECT status FROM scoring_runs ORDER BY status") == [("skipped",), ("succeeded",)]
    [(error,)] = query(db_url, "SELECT error FROM scoring_runs WHERE status = 'skipped'")
    assert "is already being scored by" in error


class _Marker:
    """Unpickling this creates a file: proof that a pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("pinned", [True, False])
def test_pinned_pickle_with_other_sha256_is_never_unpickled(
    tmp_path: Path, sqlite_url: str, pinned: bool
) -> None:
    load_table(sqlite_url, features_frame(20))
    marker = tmp_path / "unpickled.marker"
    model_path = tmp_path / "models" / "m.joblib"
    model_path.parent.mkdir()
    joblib.dump(_Marker(marker), model_path)
    extra = {"model": {"path": "models/m.joblib", "sha256": "0" * 64}} if pinned else {}
    cfg = write_config(tmp_path, sqlite_url, {"j": {**job(), **extra}})
    done = subprocess.run(
        [sys.executable, "-m", "batch_scorer.cli", "--config", str(cfg), "run", "j"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    if pinned:
        assert "was not loaded" in done.stderr and "0" * 64 in done.stderr
        assert not marker.exists(), "the pinned-but-different pickle was unpickled"
    else:
        # Control: without the pin the same file does run code when loaded.
        assert marker.exists()
    assert "Traceback" not in done.stderr
    assert query(sqlite_url, "SELECT name FROM sqlite_master WHERE name = 'scoring_runs'") == []
