"""The publish unit: any number of staged outputs, published together with the ledger row
in one transaction; nothing of them visible before, nor after a crash between the two;
and output frames staged from another process's scoring."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from batch_scorer.models.loader import load_model
from batch_scorer.storage import ledger
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.sinks.publish import Publication
from tests.helpers import AS_OF, FEATURES, features_frame, load_table, published, query, save_model, train
from tests.publish_support import start

ROOT = Path(__file__).resolve().parent.parent


def _stager(url: str, wait_file: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.publish_support", "stage", url, str(wait_file)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "staged", line + proc.stderr.read()
    return proc


def _visible(url: str) -> tuple[int, int]:
    return query(url, "SELECT count(*) FROM first")[0][0], query(url, "SELECT count(*) FROM second")[0][0]


def test_two_outputs_of_one_run_become_visible_together(tmp_path: Path, db_url: str) -> None:
    wait = tmp_path / "go"
    proc = _stager(db_url, wait)
    try:
        assert _visible(db_url) == (0, 0)  # staged, not published: a reader sees neither
        assert query(db_url, "SELECT status FROM scoring_runs") == [("running",)]
        wait.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert _visible(db_url) == (3000, 3000)
    assert query(db_url, "SELECT status, rows_scored FROM scoring_runs") == [("succeeded", 3000)]
    second = published(db_url, "second")
    assert float(second["prediction"].max()) == 3.0 and second["score"].min() >= 0.5


def test_sigkill_between_staging_and_publish_leaves_neither_output_visible(tmp_path: Path, db_url: str) -> None:
    proc = _stager(db_url, tmp_path / "never")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert _visible(db_url) == (0, 0)
    assert query(db_url, "SELECT status FROM scoring_runs") == [("running",)]  # stale: the next run abandons it
    engine = create_engine(db_url)
    try:
        again = ledger.start_run(engine, job="two", model=ledger.ModelStamp(version="v"), as_of=AS_OF,
                                 trigger="manual", output_table="first")
    finally:
        engine.dispose()
    assert dict(query(db_url, "SELECT run_id, status FROM scoring_runs"))[again - 1] == "abandoned"


def test_the_publish_unit_accepts_frames_scored_by_another_process(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(300, seed=8)
    load_table(db_url, frame)
    model_path = save_model(train("forest"), tmp_path / "m.joblib")
    out = tmp_path / "frames"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "tests.publish_support", "score", db_url, str(model_path),
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    parts = sorted(out.glob("part-*.arrow"))
    assert len(parts) == 5  # 300 rows in chunks of 70

    engine = create_engine(db_url)
    try:
        run_id, (first, _) = start(engine, "remote")
        pub = Publication(engine, run_id, "remote", AS_OF)
        stage = pub.stage(first)
        for part in parts:
            stage.write(pa.ipc.open_file(str(part)).read_all().to_pandas())
        pub.publish(lambda conn: ledger.finish_run(conn, run_id, rows_read=300, rows_scored=300))
    finally:
        engine.dispose()
    got = published(db_url, "first").sort_values("entity_id").reset_index(drop=True)
    model = load_model("j", model_path)
    rows = frame.sort_values("entity_id")
    np.testing.assert_array_equal(got["prediction"], model.estimator.predict(rows[FEATURES]))
    np.testing.assert_allclose(got["score"], model.estimator.predict_proba(rows[FEATURES])[:, 1])
    assert set(got["run_id"]) == {run_id} and set(got["job"]) == {"remote"}
