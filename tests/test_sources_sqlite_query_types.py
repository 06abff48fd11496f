"""SQLite reports no types for a query's columns, so a query job's output key and
pass-through columns take theirs from the rows: many of them, not one, and a column with
no value yet (an upstream table still empty at init-db, NULLs first) is declared without a
type, so it keeps exactly what each run gives it (integers stay integers, floats floats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import AS_OF, cli_run, features_frame, job, load_table, published, query, save_model, train
from tests.helpers import write_config as _write


def _config(tmp_path: Path, url: str, sql: str, pass_through: list[str]) -> Path:
    (tmp_path / "q.sql").write_text(sql)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    return _write(tmp_path, url, {"q": job(query="q.sql", output="q_out", pass_through=pass_through)})


def test_an_output_table_made_before_its_query_has_rows_keeps_integer_keys_and_exact_floats(
    tmp_path: Path, sqlite_url: str
) -> None:
    frame = features_frame(200, seed=4).assign(weight=lambda f: np.random.default_rng(1).normal(size=len(f)))
    load_table(sqlite_url, frame.iloc[:0])  # the upstream table exists, empty (as at init-db)
    cfg = _config(tmp_path, sqlite_url, "SELECT * FROM features WHERE snapshot_date = :as_of", ["weight"])
    assert cli_run(cfg, "init-db").exit_code == 0
    load_table(sqlite_url, frame)
    result = cli_run(cfg, "run", "q", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output

    assert query(sqlite_url, "SELECT DISTINCT typeof(entity_id), typeof(weight) FROM q_out") == [("integer", "real")]
    out = published(sqlite_url, "q_out").sort_values("entity_id")
    assert out["entity_id"].dtype.kind == "i"
    np.testing.assert_array_equal(out["weight"].to_numpy(), frame.sort_values("entity_id")["weight"].to_numpy())
    merged = out.merge(frame, on="entity_id")  # a notebook's join on the key works
    assert len(merged) == len(frame)


def test_a_pass_through_column_whose_first_rows_are_null_keeps_its_floats(tmp_path: Path, sqlite_url: str) -> None:
    frame = features_frame(300, seed=5)
    frame["x1"] = frame["x1"].astype(float)
    frame.loc[frame.index[:5], "x1"] = np.nan  # NULLs first, as ORDER BY (x1 IS NOT NULL) gives
    load_table(sqlite_url, frame)
    sql = "SELECT * FROM features WHERE snapshot_date = :as_of ORDER BY (x1 IS NOT NULL), entity_id"
    cfg = _config(tmp_path, sqlite_url, sql, ["x1"])
    result = cli_run(cfg, "run", "q", "--as-of", AS_OF.isoformat())
    assert result.exit_code == 0, result.output

    rows = query(sqlite_url, "SELECT o.entity_id FROM q_out o JOIN features f USING (entity_id) "
                             "WHERE o.x1 = f.x1 OR (o.x1 IS NULL AND f.x1 IS NULL)")
    assert len(rows) == len(frame)  # every value equal in SQL, NULLs kept NULL
    types = {t for (t,) in query(sqlite_url, "SELECT DISTINCT typeof(x1) FROM q_out")}
    assert types <= {"real", "null"} and "real" in types
    out = published(sqlite_url, "q_out")
    assert pd.api.types.is_float_dtype(out["x1"])
