"""Bad rows: rejected with a reason while the rest are scored; too many fail the run;
duplicate keys and empty sources never reach BI readers. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline

from batch_scorer.core.checks import MIN_BAD_ROWS_PER_CHUNK, Rejections, score_checked
from batch_scorer.errors import RunFailed
from batch_scorer.models.loader import load_model
from tests.baddata_support import rejected, replace_table, runs, strict_model
from tests.helpers import (
    AS_OF,
    FEATURES,
    cli_run,
    features_frame,
    job,
    load_table,
    preprocessor,
    published,
    query,
    save_model,
    write_config,
)

UNSEEN = "mauve"


def _dirty_frame(n: int = 300) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Features with planted bad rows; x1 is stored as text (a careless source)."""
    frame = features_frame(n, seed=3)
    frame["entity_id"] = frame["entity_id"].astype(object)
    bad = {"null_key": [10, 200], "unseen": [17, 251], "not_number": [33, 150]}
    frame.loc[bad["null_key"], "entity_id"] = None
    frame.loc[bad["unseen"], "color"] = UNSEEN
    frame["x1"] = [None if pd.isna(v) else repr(float(v)) for v in frame["x1"]]
    frame.loc[bad["not_number"][0], "x1"] = "oops"
    frame.loc[bad["not_number"][1], "x1"] = "12,5"
    return frame, bad


def _project(tmp_path: Path, url: str, frame: pd.DataFrame, model: object = None, **job_kw: object) -> Path:
    load_table(url, frame, entity_id=sa.BigInteger(), x1=sa.Text())
    save_model(model if model is not None else strict_model(), tmp_path / "models" / "m.joblib")
    return write_config(tmp_path, url, {"j": job(**job_kw)})  # type: ignore[arg-type]


def test_rows_that_cannot_be_scored_are_rejected_with_a_reason_and_the_rest_scored(
    tmp_path: Path, db_url: str
) -> None:
    frame, bad = _dirty_frame()
    model = strict_model()
    cfg = _project(tmp_path, db_url, frame, model, chunk_size=64, max_rejected_fraction=0.05)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 0, result.output
    assert "294 rows scored, 6 rejected" in result.output
    run = runs(db_url)[-1]
    assert (run["status"], run["rows_read"], run["rows_scored"], run["rows_rejected"]) == ("succeeded", 300, 294, 6)
    want = sorted(
        [("{\"entity_id\": null}", "NULL in a key column")] * 2
        + [(json.dumps({"entity_id": i + 1}), "column 'color': the model rejected the value (ValueError)")
           for i in bad["unseen"]]
        + [(json.dumps({"entity_id": i + 1}), "column 'x1': not a number") for i in bad["not_number"]]
    )
    assert rejected(db_url, run["run_id"]) == want

    # Every other row is scored exactly as the model scores it on clean types.
    good = frame.drop(index=[i for rows in bad.values() for i in rows])
    clean = good[FEATURES].assign(x1=pd.to_numeric(good["x1"]))
    out = published(db_url).sort_values("entity_id")
    assert list(out["entity_id"]) == [int(v) for v in good["entity_id"]]
    np.testing.assert_allclose(out["score"].astype(float), model.predict_proba(clean)[:, 1], rtol=1e-9)


def test_non_finite_predictions_are_rejected_not_written_as_null(tmp_path: Path, db_url: str) -> None:
    train = features_frame(400, seed=1)
    y = np.exp(np.nan_to_num(train["x1"].to_numpy()) + train["x2"].to_numpy())
    model = TransformedTargetRegressor(
        regressor=Pipeline([("prep", preprocessor()), ("m", LinearRegression())]), func=np.log, inverse_func=np.exp
    ).fit(train[FEATURES], y)
    frame = features_frame(100, seed=3)
    frame.loc[[5, 60], "x2"] = 1e6  # exp(huge) overflows to inf
    load_table(db_url, frame)
    save_model(model, tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(max_rejected_fraction=0.05)})

    with np.errstate(over="ignore"):
        result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 0, result.output
    assert rejected(db_url) == sorted(
        (json.dumps({"entity_id": i}), "the model returned a non-finite prediction (NaN or infinity)") for i in (6, 61)
    )
    out = published(db_url)
    assert len(out) == 98 and np.isfinite(out["prediction"].astype(float)).all()


class _CountingEstimator:
    """Delegates to a real fitted model and counts the calls (to measure bisection)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0
        self.classes_ = inner.classes_  # type: ignore[attr-defined]
        self.feature_names_in_ = inner.feature_names_in_  # type: ignore[attr-defined]

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self.calls += 1
        return self.inner.predict(X)  # type: ignore[attr-defined]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self.calls += 1
        return self.inner.predict_proba(X)  # type: ignore[attr-defined]


def _loaded(tmp_path: Path, counting: _CountingEstimator, monkeypatch: pytest.MonkeyPatch):
    # Calls are counted per probe: score each probe in one part, as one call.
    monkeypatch.setenv("BATCH_SCORER_SCORING_THREADS", "1")
    path = save_model(counting.inner, tmp_path / "m.joblib")
    real = load_model("j", path)
    from dataclasses import replace

    return replace(real, estimator=counting, has_proba=True)


def test_a_failing_chunk_is_split_to_find_the_bad_rows_in_bounded_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingEstimator(strict_model())
    model = _loaded(tmp_path, counting, monkeypatch)
    n, bad_rows = 4096, [7, 1500, 4000]
    rows = features_frame(n, seed=5)
    rows.loc[bad_rows, "color"] = UNSEEN

    checked = score_checked(model, rows, ["entity_id"], max_rejected_fraction=0.01)

    assert sorted(json.loads(k)["entity_id"] - 1 for k, _ in checked.rejected) == bad_rows
    assert len(checked.rows) == n - len(bad_rows)
    assert list(checked.rows["entity_id"]) == [i + 1 for i in range(n) if i not in bad_rows]
    np.testing.assert_allclose(
        checked.score, counting.inner.predict_proba(checked.rows[FEATURES])[:, 1], rtol=1e-12
    )
    # Bisection: at most 2 calls per level per bad row, plus naming the column.
    bound = 1 + 2 * len(bad_rows) * math.ceil(math.log2(n)) + len(bad_rows) * len(FEATURES)
    assert counting.calls <= bound, counting.calls


def test_a_chunk_where_most_rows_fail_stops_early_with_the_reasons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingEstimator(strict_model())
    model = _loaded(tmp_path, counting, monkeypatch)
    rows = features_frame(5000, seed=5)
    # A different unknown value in most rows (say, IDs in a category column): each
    # needs its own search, so the search gives up instead of running ~2 log2(n) calls
    # for each of 4,900 rows.
    rows.loc[rows.index[100:], "color"] = [f"{UNSEEN}-{i}" for i in range(4900)]

    with pytest.raises(RunFailed) as caught:
        score_checked(model, rows, ["entity_id"], job_name="j", max_rejected_fraction=0.01)

    message = str(caught.value)
    assert "job 'j'" in message and "nothing was published" in message
    assert "column 'color': the model rejected the value (ValueError)" in message
    assert UNSEEN not in message
    limit = max(MIN_BAD_ROWS_PER_CHUNK, math.ceil(2 * 0.01 * 5000))
    assert counting.calls <= 4 * (limit + 1) * math.ceil(math.log2(5000)), counting.calls


def test_rows_sharing_a_rejected_value_are_rejected_together_in_few_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = _CountingEstimator(strict_model())
    model = _loaded(tmp_path, counting, monkeypatch)
    rows = features_frame(20_000, seed=5)
    bad_rows = list(range(3, 20_000, 50))  # 400 rows with the same new category
    rows.loc[bad_rows, "color"] = UNSEEN

    checked = score_checked(model, rows, ["entity_id"], max_rejected_fraction=0.05)

    assert sorted(json.loads(k)["entity_id"] - 1 for k, _ in checked.rejected) == bad_rows
    assert {r for _, r in checked.rejected} == {"column 'color': the model rejected the value (ValueError)"}
    assert len(checked.rows) == 20_000 - 400
    assert counting.calls <= 2 * math.ceil(math.log2(20_000)) + len(FEATURES) + 2, counting.calls


def test_above_max_rejected_fraction_the_run_fails_and_publishes_nothing(tmp_path: Path, db_url: str) -> None:
    clean = features_frame(200, seed=3)
    cfg = _project(tmp_path, db_url, clean, chunk_size=50)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    before = published(db_url).sort_values("entity_id").reset_index(drop=True)

    dirty = clean.copy()
    dirty.loc[dirty.index[:6], "color"] = UNSEEN  # 3% > the default 1%
    dirty.loc[dirty.index[50], "entity_id"] = None
    replace_table(db_url, dirty, entity_id=sa.BigInteger())
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 1, result.output
    assert "7 of 200 rows could not be scored, above max_rejected_fraction 0.01" in result.output
    assert "nothing was published" in result.output
    assert "column 'color': the model rejected the value (ValueError) (6)" in result.output
    assert "NULL in a key column (1)" in result.output
    pd.testing.assert_frame_equal(published(db_url).sort_values("entity_id").reset_index(drop=True), before)
    failed = runs(db_url)[-1]
    assert failed["status"] == "failed" and failed["rows_rejected"] == 7
    assert "max_rejected_fraction" in failed["error"]
    # Kept for debugging: the failed run's rejected rows are recorded under its run_id.
    assert len(rejected(db_url, failed["run_id"])) == 7


def test_duplicate_keys_fail_the_run_with_count_and_examples(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(120, seed=3)
    frame.loc[[70, 110], "entity_id"] = 5  # 5 three times, across chunks
    frame.loc[90, "entity_id"] = 9
    cfg = _project(tmp_path, db_url, frame, chunk_size=32)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 1, result.output
    assert "the source has 2 key(s) that occur more than once for as_of 2026-03-31 (5 rows)" in result.output
    assert '{"entity_id": 5} (3 rows), {"entity_id": 9} (2 rows)' in result.output
    assert "nothing was published" in result.output
    assert published(db_url).empty
    assert runs(db_url)[-1]["status"] == "failed"
    assert "occur more than once" in runs(db_url)[-1]["error"]


def test_duplicate_keys_are_caught_in_a_table_made_before_its_key_index_was_unique(
    tmp_path: Path, db_url: str
) -> None:
    """Older output tables have a plain key index: the duplicate check is then a query."""
    frame = features_frame(120, seed=3)
    cfg = _project(tmp_path, db_url, frame, chunk_size=32)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:  # what earlier versions created
        conn.exec_driver_sql("DROP INDEX ix_predictions_latest")
        conn.exec_driver_sql("DROP INDEX ix_predictions_run")
        conn.exec_driver_sql("CREATE INDEX ix_predictions_latest ON predictions (job, entity_id, as_of, run_id)")
        conn.exec_driver_sql("CREATE INDEX ix_predictions_run ON predictions (job, as_of, model_version)")
    engine.dispose()
    before = published(db_url)
    original = frame["entity_id"].copy()
    frame.loc[[70, 110], "entity_id"] = 5
    replace_table(db_url, frame)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 1, result.output
    assert "the source has 1 key(s) that occur more than once for as_of 2026-03-31 (3 rows)" in result.output
    pd.testing.assert_frame_equal(published(db_url), before)
    frame["entity_id"] = original
    replace_table(db_url, frame)
    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output
    again = published(db_url)
    assert len(again) == 120 and again["run_id"].nunique() == 1 and again["run_id"].iloc[0] > before["run_id"].max()


def test_a_rerun_replaces_only_its_own_job_as_of_and_model_version(tmp_path: Path, db_url: str) -> None:
    """The replaced rows are found through the ledger; other as_ofs and jobs stay."""
    day2 = AS_OF.replace(day=AS_OF.day - 1)
    frame = pd.concat([features_frame(60, seed=3), features_frame(60, seed=4, as_of=day2)], ignore_index=True)
    load_table(db_url, frame, entity_id=sa.BigInteger(), x1=sa.Text())
    save_model(strict_model(), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(), "k": job()})
    for name, day in [("j", AS_OF), ("j", day2), ("k", AS_OF), ("j", AS_OF)]:
        assert cli_run(cfg, "run", name, "--as-of", day.isoformat()).exit_code == 0

    counts = query(
        db_url, "SELECT job, as_of, count(*), count(DISTINCT run_id) FROM predictions GROUP BY job, as_of ORDER BY 1, 2"
    )
    assert [(j, str(d), n, r) for j, d, n, r in counts] == [
        ("j", str(day2), 60, 1), ("j", str(AS_OF), 60, 1), ("k", str(AS_OF), 60, 1)
    ]
    (latest_j,) = query(db_url, "SELECT max(run_id) FROM scoring_runs WHERE job = 'j'")[0]
    assert query(db_url, "SELECT DISTINCT run_id FROM predictions WHERE job = 'j' AND as_of = :d", d=AS_OF) == [
        (latest_j,)
    ]


def test_empty_source_leaves_published_predictions_alone(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(50, seed=3)
    cfg = _project(tmp_path, db_url, frame)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    replace_table(db_url, frame.iloc[0:0])

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 1
    assert "returned no rows" in result.output and "allow_empty: true" in result.output
    assert len(published(db_url)) == 50
    assert runs(db_url)[-1]["status"] == "failed"


def test_allow_empty_true_replaces_published_predictions_with_nothing(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(50, seed=3)
    cfg = _project(tmp_path, db_url, frame, allow_empty=True)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert len(published(db_url)) == 50
    replace_table(db_url, frame.iloc[0:0])

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 0, result.output
    assert published(db_url).empty
    assert runs(db_url)[-1]["status"] == "succeeded"


def test_rejected_rows_are_flushed_in_batches_so_memory_stays_bounded() -> None:
    flushed: list[list[tuple[str, str]]] = []
    rejections = Rejections(flush=lambda rows: flushed.append(list(rows)), flush_every=100)
    for i in range(250):
        rejections.extend([(f'{{"id": {i}}}', "NULL in a key column" if i % 2 else "other")])
    assert [len(b) for b in flushed] == [100, 100]
    assert len(rejections.rows) == 50 and len(rejections) == 250
    assert rejections.top_reasons() == [("other", 125), ("NULL in a key column", 125)]


def test_a_run_that_gives_up_on_a_chunk_fails_and_keeps_the_rows_it_found(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(300, seed=3)
    frame.loc[frame.index[40:140], "color"] = [f"{UNSEEN}-{i}" for i in range(100)]  # 100 different new values
    cfg = _project(tmp_path, db_url, frame, chunk_size=300)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 1, result.output
    assert "the search for the bad rows was stopped; nothing was published" in result.output
    assert published(db_url).empty
    failed = runs(db_url)[-1]
    assert failed["status"] == "failed"
    found = rejected(db_url, failed["run_id"])
    assert len(found) == MIN_BAD_ROWS_PER_CHUNK + 1 == failed["rows_rejected"]
    assert {r for _, r in found} == {"column 'color': the model rejected the value (ValueError)"}
