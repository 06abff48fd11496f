"""A job whose upstream job (``after:``) *failed* while running (valid, started, then
refused: too many bad rows, or a model that raises on predict) is not run: it is
recorded ``skipped`` with an error naming the upstream job, the command exits 1, and
a job that does not depend on it is published whole all the same."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.gaps_support import has_table, rows_of_query, save_strict_model, statuses
from tests.helpers import AS_OF, cli_run, features_frame, job, load_table, save_model, train, write_config

N = 80


def _null_keys(tmp_path: Path, url: str) -> None:
    """The upstream source: a quarter of its keys NULL (rejected rows, far above 0.01)."""
    frame = features_frame(N, seed=6)
    frame["entity_id"] = pd.array([None if i % 4 == 0 else i for i in range(1, N + 1)], dtype="Int64")
    load_table(url, frame, table="up_features")
    save_model(train("binary"), tmp_path / "models" / "up.joblib")


def _model_raises(tmp_path: Path, url: str) -> None:
    """The upstream model never saw the category every source row has: predict raises."""
    frame = features_frame(N, seed=6)
    frame["color"] = "purple"
    load_table(url, frame, table="up_features")
    save_strict_model(tmp_path / "models" / "up.joblib")


@pytest.mark.parametrize("breaks", [_null_keys, _model_raises], ids=["bad_rows", "model_raises"])
def test_a_job_whose_upstream_failed_at_run_time_is_skipped_naming_it_and_exit_is_1(
    tmp_path: Path, db_url: str, breaks: object
) -> None:
    breaks(tmp_path, db_url)  # type: ignore[operator]
    load_table(db_url, features_frame(N, seed=7))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    jobs = {
        "up": job(model="models/up.joblib", table="up_features", output="up_out"),
        "down": job(output="downstream", after=["up"]),
        "other": job(output="others"),
    }
    cfg = write_config(tmp_path, db_url, jobs)

    result = cli_run(cfg, "run", "--all", "--as-of", str(AS_OF))

    assert result.exit_code == 1, result.output
    assert statuses(db_url) == {"up": ["failed"], "down": ["skipped"], "other": ["succeeded"]}
    [(up_run, up_error)] = rows_of_query(db_url, "SELECT run_id, error FROM scoring_runs WHERE job = 'up'")
    assert "max_rejected_fraction" in up_error  # it ran, and its rows were refused
    [(error, started, finished)] = rows_of_query(
        db_url, "SELECT error, started_at, finished_at FROM scoring_runs WHERE job = 'down'")
    assert f"not run because its upstream job 'up' failed (run {up_run})" in error
    assert started is not None and finished is not None  # recorded closed, never running
    assert "down" in result.output and "skipped" in result.output
    # Nothing of up or down is visible; other is published whole, by its one run.
    assert rows_of_query(db_url, "SELECT count(*) FROM up_out") == [(0,)]
    assert not has_table(db_url, "downstream") or rows_of_query(db_url, "SELECT count(*) FROM downstream") == [(0,)]
    [(other_run,)] = rows_of_query(db_url, "SELECT run_id FROM scoring_runs WHERE job = 'other'")
    assert rows_of_query(db_url, "SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) "
                                 "FROM others") == [(N, N, other_run, other_run)]
