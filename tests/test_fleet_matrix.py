"""A job matrix: each expansion scores its own rows with its own model, in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.fleet_support import COUNTRIES, as_of_arg, country_frame, expected, fleet, per_country_models
from tests.helpers import AS_OF, cli_run, load_table, published, query, write_config


def _assert_each_expansion_is_its_own_model(url: str, frame: pd.DataFrame, models: dict, job: str = "m") -> None:
    out = published(url)
    assert sorted(out["job"].unique()) == [f"{job}.{c}" for c in sorted(models)]
    for country, model in models.items():
        mine = out[out["job"] == f"{job}.{country}"].sort_values("entity_id").reset_index(drop=True)
        rows = frame[frame["country"] == country]
        want = expected(model, rows)
        assert list(mine["entity_id"]) == list(want["entity_id"])
        assert list(mine["prediction"]) == list(want["prediction"])
        np.testing.assert_allclose(mine["score"].astype(float), want["score"], rtol=1e-12)
        assert set(mine["country"]) == {country}


def test_every_expansion_publishes_its_own_models_output_on_its_own_rows(tmp_path: Path, db_url: str) -> None:
    cfg, frame, models = fleet(tmp_path, db_url)
    result = cli_run(cfg, "run", "m", *as_of_arg())
    assert result.exit_code == 0, result.output
    for country in COUNTRIES:
        assert f"m.{country} " in result.output  # one summary table row per expansion
    _assert_each_expansion_is_its_own_model(db_url, frame, models)
    runs = query(db_url, "SELECT job, status FROM scoring_runs ORDER BY job")
    assert runs == [(f"m.{c}", "succeeded") for c in sorted(COUNTRIES)]


def test_one_expansion_runs_alone_by_its_name(tmp_path: Path, sqlite_url: str) -> None:
    cfg, frame, models = fleet(tmp_path, sqlite_url)
    assert cli_run(cfg, "run", "m.BE", *as_of_arg()).exit_code == 0
    assert query(sqlite_url, "SELECT DISTINCT job FROM predictions") == [("m.BE",)]


def test_a_two_key_matrix_with_a_composite_source_key(tmp_path: Path, db_url: str) -> None:
    frame = country_frame(80)
    frame["tier"] = np.where(frame["entity_id"] % 2 == 0, "gold", "basic")
    load_table(db_url, frame, tier=__import__("sqlalchemy").Text())
    models = per_country_models(tmp_path)
    job = {
        "matrix": {"country": COUNTRIES, "tier": ["gold", "basic"]},
        "model": {"path": "models/m_{country}.joblib"},
        "source": {"table": "features", "key": ["entity_id", "region"], "as_of_column": "snapshot_date",
                   "where": {"country": "{country}", "tier": "{tier}"}},
        "output": {"table": "predictions", "pass_through": ["country", "tier"]},
    }
    cfg = write_config(tmp_path, db_url, {"m": job})
    result = cli_run(cfg, "run", "m", *as_of_arg())
    assert result.exit_code == 0, result.output
    out = published(db_url)
    assert sorted(out["job"].unique()) == sorted(f"m.{c}.{t}" for c in COUNTRIES for t in ("gold", "basic"))
    for (country, tier), part in out.groupby(["country", "tier"]):
        assert set(part["job"]) == {f"m.{country}.{tier}"}
        rows = frame[(frame["country"] == country) & (frame["tier"] == tier)]
        want = expected(models[country], rows)
        got = part.sort_values("entity_id").reset_index(drop=True)
        assert list(got["prediction"]) == list(want["prediction"])
        assert list(got["region"]) == list(rows.sort_values("entity_id")["region"])


def test_a_query_source_receives_matrix_values_as_bind_parameters(tmp_path: Path, db_url: str) -> None:
    frame = country_frame(60)
    load_table(db_url, frame)
    models = per_country_models(tmp_path)
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "by_country.sql").write_text(
        "-- one country's rows for :as_of\n"
        "SELECT * FROM features WHERE snapshot_date = :as_of AND country = :country -- the matrix value\n"
    )
    job = {"matrix": {"country": COUNTRIES}, "model": {"path": "models/m_{country}.joblib"},
           "source": {"query": "sql/by_country.sql", "key": ["entity_id"]},
           "output": {"table": "predictions", "pass_through": ["country"]}}
    cfg = write_config(tmp_path, db_url, {"m": job})
    result = cli_run(cfg, "run", "m", *as_of_arg())
    assert result.exit_code == 0, result.output
    _assert_each_expansion_is_its_own_model(db_url, frame, models)


@pytest.mark.parametrize("hostile", ["x' OR '1'='1", "north'; DROP TABLE features; --", "north\\' --"])
def test_a_hostile_where_value_stays_a_bound_parameter(tmp_path: Path, db_url: str, hostile: str) -> None:
    frame = country_frame(40)
    load_table(db_url, frame)
    per_country_models(tmp_path)
    job = {"model": {"path": "models/m_AT.joblib"}, "allow_empty": True,
           "source": {"table": "features", "key": ["entity_id"], "as_of_column": "snapshot_date",
                      "where": {"region": hostile}}}
    cfg = write_config(tmp_path, db_url, {"j": job})
    result = cli_run(cfg, "run", "j", *as_of_arg())
    assert result.exit_code == 0, result.output
    assert query(db_url, "SELECT count(*) FROM features") == [(len(frame),)]  # still there
    assert query(db_url, "SELECT rows_read, rows_scored FROM scoring_runs") == [(0, 0)]  # matched nothing


def test_matrix_jobs_selected_by_name_run_in_one_process_with_one_summary(tmp_path: Path, sqlite_url: str) -> None:
    cfg, _, _ = fleet(tmp_path, sqlite_url)
    from batch_scorer import api

    results = api.run(cfg, ["m"], as_of=AS_OF)
    assert [r.job for r in results] == [f"m.{c}" for c in COUNTRIES]
    assert results.exit_code == 0 and all(r.status == "succeeded" for r in results)
