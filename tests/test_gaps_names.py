"""A mixed-case output table name (``output.table: Churn``) is kept as written: on PostgreSQL
the table and its views are created with their capitals (``"Churn"``, ``"Churn_latest"``,
``"Churn_daily"``) and read with quotes, on SQLite under the same names; a re-run of the
as_of replaces the set, and a retract finds the table."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.gaps_support import rows_of_query
from tests.helpers import AS_OF, cli_run, features_frame, job, load_table, save_model, train, write_config
from tests.registry_support import ok

N = 60
NAMES = ["Churn", "Churn_daily", "Churn_latest"]


def _catalogue_names(url: str) -> list[str]:
    if url.startswith("sqlite"):
        sql = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND lower(name) LIKE 'churn%'"
    else:
        sql = ("SELECT relname FROM pg_class WHERE relkind IN ('r', 'v') AND lower(relname) LIKE 'churn%' "
               "AND relnamespace = to_regnamespace(current_schema())::oid")
    return sorted(name for (name,) in rows_of_query(url, sql))


def test_a_mixed_case_output_table_keeps_its_capitals_and_a_rerun_replaces_its_set(
    tmp_path: Path, db_url: str
) -> None:
    load_table(db_url, features_frame(N, seed=4))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(output="Churn")})

    ok(cfg, "run", "j", "--as-of", str(AS_OF))
    ok(cfg, "run", "j", "--as-of", str(AS_OF))

    assert _catalogue_names(db_url) == NAMES  # exactly these, no lower-case twin
    if db_url.startswith("postgresql"):
        with pytest.raises(sa.exc.ProgrammingError, match='relation "churn" does not exist'):
            rows_of_query(db_url, "SELECT count(*) FROM Churn")  # unquoted, it folds to churn: not ours
    runs = [r for (r,) in rows_of_query(db_url, "SELECT run_id FROM scoring_runs WHERE status = 'succeeded' "
                                                "AND replaced_by IS NULL")]
    assert len(runs) == 1
    assert rows_of_query(db_url, 'SELECT count(*), count(DISTINCT entity_id), min(run_id), max(run_id) '
                                 'FROM "Churn"') == [(N, N, runs[0], runs[0])]
    assert rows_of_query(db_url, 'SELECT count(*), min(run_id) FROM "Churn_latest"') == [(N, runs[0])]
    assert rows_of_query(db_url, 'SELECT sum("rows") FROM "Churn_daily"') == [(N,)]

    retracted = cli_run(cfg, "retract", str(runs[0]))
    assert retracted.exit_code == 0, retracted.output
    assert f"{N} rows removed from Churn" in retracted.output
    assert rows_of_query(db_url, 'SELECT count(*) FROM "Churn"') == [(0,)]
