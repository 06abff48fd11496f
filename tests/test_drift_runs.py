"""Drift through real runs: a reference run, then a shifted as_of, on SQLite and PostgreSQL.

A feature shifted by two standard deviations alerts while the others stay ok; a
column gone all NULL upstream alerts; on_alert: fail publishes nothing and says
which feature drifted by how much; a rare category is never named anywhere; the
stored counts are what numpy counts on the same rows.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from batch_scorer import api
from tests.helpers import (
    AS_OF,
    FEATURES,
    OTHER_AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    published,
    query,
    save_model,
    train,
    write_config,
)

REFERENCE_DAY = OTHER_AS_OF  # 2026-02-28: the first run, the reference
LATER_DAY = AS_OF  # 2026-03-31
ROWS = 2_000


def _days(url: str, tmp_path: Path, later: pd.DataFrame, **job_kw: object) -> tuple[Path, pd.DataFrame, object]:
    """A feature table of two as_ofs (the reference day, then ``later``) and a job scoring it."""
    reference = features_frame(ROWS, seed=1, as_of=REFERENCE_DAY)
    load_table(url, pd.concat([reference, later], ignore_index=True))
    model = train("binary")
    save_model(model, tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(**job_kw)}), reference, model


def _run(cfg: Path, day: date) -> object:
    return cli_run(cfg, "run", "j", "--as-of", day.isoformat())


def _drift(url: str, run_id: int) -> dict[str, tuple[float, str]]:
    rows = query(url, "SELECT feature, psi_reference, status FROM drift WHERE run_id = :r", r=run_id)
    return {f: (float(p), s) for f, p, s in rows}


def test_a_feature_shifted_two_standard_deviations_alerts_and_the_others_stay_ok(tmp_path: Path, db_url: str) -> None:
    later = features_frame(ROWS, seed=2, as_of=LATER_DAY)
    later["x1"] = later["x1"] + 2 * later["x1"].std()
    cfg, _, _ = _days(db_url, tmp_path, later)
    assert _run(cfg, REFERENCE_DAY).exit_code == 0
    result = _run(cfg, LATER_DAY)
    assert result.exit_code == 0, result.output

    drifts = _drift(db_url, 2)
    assert drifts["x1"][1] == "alert" and drifts["x1"][0] > 1.0
    assert {f: s for f, (_, s) in drifts.items() if f in ("x2", "x3", "color")} == {
        "x2": "ok", "x3": "ok", "color": "ok"}
    assert "score" in drifts and "prediction" in drifts  # the model's outputs are profiled too
    assert query(db_url, "SELECT run_id, drift_status FROM scoring_runs ORDER BY run_id") == [(1, "ok"), (2, "alert")]
    # Against the reference (run 1, which is its own reference) and against the previous run: the same run here.
    refs = query(db_url, "SELECT DISTINCT reference_profile, previous_run_id FROM drift WHERE run_id = 2")
    assert refs == [("run:1", 1)]
    first = query(db_url, "SELECT DISTINCT psi_reference, status, reference_profile FROM drift WHERE run_id = 1")
    assert first == [(0.0, "ok", "run:1")]
    assert {r[0] for r in query(db_url, "SELECT DISTINCT run_id FROM drift_latest")} == {2}
    # One log line names the drifted features and their PSI.
    lines = [line for line in result.output.splitlines() if "drift:" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], result.output
    assert f"x1 PSI {drifts['x1'][0]:.2f}" in lines[0] and "alert" in lines[0]


def test_on_alert_fail_publishes_nothing_and_names_the_feature_and_its_psi(tmp_path: Path, db_url: str) -> None:
    later = features_frame(ROWS, seed=2, as_of=LATER_DAY)
    later["x2"] = later["x2"] + 2.0
    cfg, _, _ = _days(db_url, tmp_path, later, monitor={"on_alert": "fail"})
    assert _run(cfg, REFERENCE_DAY).exit_code == 0

    result = _run(cfg, LATER_DAY)
    assert result.exit_code == 1
    error_line = next(line for line in result.output.splitlines() if line.startswith("Error:"))
    assert "x2 PSI " in error_line and "on_alert is fail" in error_line and "nothing was published" in error_line
    status, error, drift_status = query(db_url, "SELECT status, error, drift_status FROM scoring_runs "
                                              "WHERE run_id = 2")[0]
    assert status == "failed" and "x2 PSI " in error and drift_status == "alert"
    [again] = api.run(cfg, ["j"], as_of=LATER_DAY)  # the API says so too
    assert (again.status, again.exit_code, again.drift_status) == ("failed", 1, "alert")
    assert {str(d)[:10] for d in published(db_url)["as_of"]} == {REFERENCE_DAY.isoformat()}
    assert query(db_url, "SELECT count(*) FROM drift WHERE run_id = 2") == [(0,)]
    assert query(db_url, "SELECT count(*) FROM feature_profiles WHERE run_id = 2") == [(0,)]


def test_a_column_that_became_all_null_upstream_alerts(tmp_path: Path, db_url: str) -> None:
    later = features_frame(ROWS, seed=2, as_of=LATER_DAY)
    later["x2"] = np.nan  # the imputer still scores it: only monitoring notices
    cfg, _, _ = _days(db_url, tmp_path, later)
    assert _run(cfg, REFERENCE_DAY).exit_code == 0
    assert _run(cfg, LATER_DAY).exit_code == 0
    drifts = _drift(db_url, 2)
    assert drifts["x2"][1] == "alert" and drifts["x2"][0] > 5  # ~ ln(1/0.0001): the NULL bin was empty
    assert drifts["x3"][1] == "ok"
    null_bin = query(db_url, "SELECT rows FROM feature_profiles WHERE run_id = 2 AND feature = 'x2' "
                             "ORDER BY bin DESC LIMIT 1")
    assert null_bin == [(ROWS,)]


def test_a_category_held_by_fewer_than_20_reference_rows_is_never_named(tmp_path: Path, db_url: str) -> None:
    reference = features_frame(ROWS, seed=1, as_of=REFERENCE_DAY)
    reference.loc[:18, "color"] = "mauve"  # 19 rows: below the 20 a named category needs
    later = features_frame(ROWS, seed=2, as_of=LATER_DAY)
    later.loc[:199, "color"] = "mauve"
    load_table(db_url, pd.concat([reference, later], ignore_index=True))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job()})
    assert _run(cfg, REFERENCE_DAY).exit_code == 0
    assert _run(cfg, LATER_DAY).exit_code == 0

    stored = query(db_url, "SELECT profile_id, feature, category FROM feature_profiles")
    drifted = query(db_url, "SELECT feature, reference_profile, status FROM drift")
    assert not any("mauve" in str(v) for row in stored + drifted for v in row)
    categories = {c for _, f, c in stored if f == "color"}
    assert {"red", "green", "blue"} <= categories  # the frequent ones are named
    # The rare category counts in `other`, which the later day's 200 rows filled.
    other = query(db_url, "SELECT rows FROM feature_profiles WHERE run_id = 2 AND feature = 'color' "
                          "AND category IS NULL ORDER BY bin")
    assert other[0][0] == 200


def test_stored_bin_counts_equal_numpy_on_the_same_source_rows(tmp_path: Path, db_url: str) -> None:
    later = features_frame(ROWS, seed=2, as_of=LATER_DAY)
    later["x1"] = later["x1"] * 1.5
    cfg, reference, model = _days(db_url, tmp_path, later, chunk_size=300)
    assert _run(cfg, REFERENCE_DAY).exit_code == 0
    assert _run(cfg, LATER_DAY).exit_code == 0

    scores = {d: model.predict_proba(f[FEATURES])[:, 1] for d, f in ((1, reference), (2, later))}
    for feature, ref_values in (("x1", reference["x1"]), ("x2", reference["x2"]), ("score", scores[1])):
        finite = np.asarray(ref_values, dtype=float)
        edges = np.unique(np.quantile(finite[~np.isnan(finite)], np.arange(1, 10) / 10))
        for run_id, frame in ((1, reference), (2, later)):
            values = scores[run_id] if feature == "score" else frame[feature].to_numpy(dtype=float)
            null = np.isnan(values)
            expected = np.bincount(np.searchsorted(edges, values[~null], side="left"), minlength=len(edges) + 1)
            stored = query(db_url, "SELECT bin, upper, rows FROM feature_profiles WHERE run_id = :r AND feature = :f "
                                   "ORDER BY bin", r=run_id, f=feature)
            assert [r[2] for r in stored] == [*expected.tolist(), int(null.sum())], (feature, run_id)
            np.testing.assert_allclose([r[1] for r in stored[:-2]], edges, rtol=1e-12)
    colors = later["color"].value_counts()
    stored = dict(query(db_url, "SELECT category, rows FROM feature_profiles WHERE run_id = 2 AND feature = 'color' "
                                "AND category IS NOT NULL"))
    assert stored == {c: int(colors[c]) for c in stored} and set(stored) == {"red", "green", "blue"}


def test_psi_previous_compares_with_the_previous_as_of_run(tmp_path: Path, sqlite_url: str) -> None:
    third_day = date(2026, 4, 30)
    later = features_frame(ROWS, seed=2, as_of=LATER_DAY)
    later["x1"] = later["x1"] + 3
    third = features_frame(ROWS, seed=3, as_of=third_day)
    third["x1"] = third["x1"] + 3
    cfg, _, _ = _days(sqlite_url, tmp_path, pd.concat([later, third]))
    for day in (REFERENCE_DAY, LATER_DAY, third_day):
        assert _run(cfg, day).exit_code == 0
    psi_ref, psi_prev, prev = query(sqlite_url, "SELECT psi_reference, psi_previous, previous_run_id FROM drift "
                                                "WHERE run_id = 3 AND feature = 'x1'")[0]
    assert psi_ref > 1.0 and psi_prev < 0.1 and prev == 2  # shifted against the reference, not against yesterday


def test_monitoring_disabled_stores_no_profile(tmp_path: Path, sqlite_url: str) -> None:
    cfg, _, _ = _days(sqlite_url, tmp_path, features_frame(50, seed=2, as_of=LATER_DAY),
                      monitor={"enabled": False})
    assert _run(cfg, REFERENCE_DAY).exit_code == 0
    assert query(sqlite_url, "SELECT count(*) FROM feature_profiles") == [(0,)]
    assert query(sqlite_url, "SELECT drift_status FROM scoring_runs") == [(None,)]
