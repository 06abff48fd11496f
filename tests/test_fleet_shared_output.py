"""Jobs of one command that share an output table not created yet define it alike: its
prediction column holds every job's predictions (text holds any kind, float holds integers
and booleans), whichever job happens to create it first, in ``run`` and in ``init-db``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from batch_scorer import api
from batch_scorer.storage.db import create_engine
from tests.helpers import (
    AS_OF,
    features_frame,
    job,
    load_table,
    published,
    query,
    save_model,
    train,
    write_config,
)

# Config order puts another kind first: at --parallel 1 that job creates the table.
CASES = {
    "text": (["binary", "multiclass", "multiclass"], "text"),
    "text, a regressor first": (["regressor", "binary", "multiclass"], "text"),
    "float": (["binary", "regressor"], "float"),
}
# The _daily view's form: counts per prediction, or a regressor's numbers.
VIEW_COLUMN = {"text": "share", "float": "mean_prediction"}


def _config(tmp_path: Path, url: str, kinds: list[str]) -> Path:
    load_table(url, features_frame(120, seed=4))
    jobs = {}
    for i, kind in enumerate(kinds):
        save_model(train(kind, features_frame(300, seed=20 + i)), tmp_path / "models" / f"j{i}.joblib")
        jobs[f"j{i}"] = job(model=f"models/j{i}.joblib", output="shared_out")
    return write_config(tmp_path, url, jobs, defaults={"parallel_jobs": 1})


def _prediction_type(url: str) -> str:
    engine = create_engine(url)
    try:
        column = next(c for c in sa.inspect(engine).get_columns("shared_out") if c["name"] == "prediction")
    finally:
        engine.dispose()
    return str(column["type"]).lower()


def _columns(url: str, name: str) -> list[str]:
    engine = create_engine(url)
    try:
        return [c["name"] for c in sa.inspect(engine).get_columns(name)]
    finally:
        engine.dispose()


def _family(type_name: str) -> str:
    return "text" if "text" in type_name or "char" in type_name else (
        "float" if "float" in type_name or "double" in type_name or "real" in type_name else type_name)


def _as(column_kind: str, model_kind: str, values: object) -> list[object]:
    """Predictions as a column of that kind holds them: numbers exactly (a regressor's in a
    text column too: its exact text, not 15 digits)."""
    if column_kind == "text" and model_kind != "regressor":
        return [str(v) for v in pd.Series(values).tolist()]
    return [float(v) for v in pd.Series(values).tolist()]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_shared_output_table_holds_every_jobs_predictions_whichever_job_creates_it(
    tmp_path: Path, db_url: str, case: str
) -> None:
    kinds, wanted = CASES[case]
    cfg = _config(tmp_path, db_url, kinds)
    results = api.run(cfg, all_jobs=True, as_of=AS_OF)
    assert results.exit_code == 0, [(r.job, r.status, r.error) for r in results]
    assert _family(_prediction_type(db_url)) == wanted
    out = published(db_url, "shared_out")
    frame = features_frame(120, seed=4)
    for i, kind in enumerate(kinds):
        mine = out[out["job"] == f"j{i}"].sort_values("entity_id")
        expected = train(kind, features_frame(300, seed=20 + i)).predict(frame.sort_values("entity_id"))
        assert _as(wanted, kind, mine["prediction"]) == _as(wanted, kind, expected), f"j{i}"
    daily = query(db_url, "SELECT * FROM shared_out_daily")
    assert daily and VIEW_COLUMN[wanted] in _columns(db_url, "shared_out_daily")
    # The next day's run of the same jobs fits the table it made.
    assert api.run(cfg, all_jobs=True, as_of=AS_OF).exit_code == 0


@pytest.mark.parametrize("case", ["text, a regressor first", "float"])
def test_init_db_defines_a_shared_output_table_as_a_run_of_its_jobs_would(
    tmp_path: Path, db_url: str, case: str
) -> None:
    kinds, wanted = CASES[case]
    report = api.init_db(_config(tmp_path, db_url, kinds))
    assert report.ok, report.lines
    assert _family(_prediction_type(db_url)) == wanted
    assert VIEW_COLUMN[wanted] in _columns(db_url, "shared_out_daily")


def test_jobs_after_others_that_share_a_new_table_define_it_alike_too(tmp_path: Path, db_url: str) -> None:
    """Jobs planned once their upstream job is done (a later wave) are planned together:
    the rule holds for them as for the jobs planned first."""
    load_table(db_url, features_frame(120, seed=4))
    kinds = ["regressor", "multiclass"]
    jobs = {"up": job(model="models/up.joblib", output="up_out")}
    save_model(train("binary"), tmp_path / "models" / "up.joblib")
    for i, kind in enumerate(kinds):
        save_model(train(kind, features_frame(300, seed=20 + i)), tmp_path / "models" / f"j{i}.joblib")
        jobs[f"j{i}"] = job(model=f"models/j{i}.joblib", output="shared_out", after=["up"])
    cfg = write_config(tmp_path, db_url, jobs, defaults={"parallel_jobs": 1})
    results = api.run(cfg, all_jobs=True, as_of=AS_OF)
    assert results.exit_code == 0, [(r.job, r.status, r.error) for r in results]
    assert _family(_prediction_type(db_url)) == "text"
    assert "share" in _columns(db_url, "shared_out_daily")
