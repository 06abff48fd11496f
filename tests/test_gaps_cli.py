"""Commands whose output was not checked: ``jobs`` and ``jobs --graph`` on a matrix with an
``after:`` job (no database needed), ``runs --job`` of a job no longer in the config, and
a backfill range longer than the limit (7,320 days: refused, nothing written)."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from batch_scorer.errors import UsageError
from batch_scorer.runtime.backfill import MAX_DAYS, date_range
from tests.fleet_support import COUNTRIES, as_of_arg, country_frame, matrix_job, per_country_models
from tests.gaps_support import has_table, rows_of_query
from tests.helpers import AS_OF, cli_run, job, load_table, write_config

TWO = COUNTRIES[:2]  # AT, BE


def _fleet_config(tmp_path: Path, url: str) -> Path:
    down = {**job(model="models/down.joblib", table="predictions_latest", as_of_column=None, output="downstream"),
            "after": ["m"]}
    return write_config(tmp_path, url, {"m": matrix_job(TWO, schedule="0 3 * * *"), "down": down})


def _columns(output: str) -> list[dict[str, str]]:
    """The rows of a table the CLI printed, by header (columns cut where the header's words start)."""
    header, *lines = output.rstrip("\n").splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for line in lines]


def test_jobs_lists_every_expanded_job_with_model_source_output_schedule_and_after(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    cfg = _fleet_config(tmp_path, f"sqlite:///{db}")
    result = cli_run(cfg, "jobs")
    assert result.exit_code == 0, result.output
    assert _columns(result.output) == [
        {"job": "m.AT", "model": "models/m_AT.joblib", "source": "features [country=AT]", "output": "predictions",
         "schedule": "0 3 * * *", "after": ""},
        {"job": "m.BE", "model": "models/m_BE.joblib", "source": "features [country=BE]", "output": "predictions",
         "schedule": "0 3 * * *", "after": ""},
        {"job": "down", "model": "models/down.joblib", "source": "predictions_latest", "output": "downstream",
         "schedule": "", "after": "m.AT, m.BE"},  # the matrix name, expanded
    ]
    assert _columns(cli_run(cfg, "jobs", "m").output) == _columns(result.output)[:2]  # a matrix name selects both
    assert not db.exists()  # the configuration alone: no database opened


def _mermaid(text: str) -> tuple[set[tuple[str, str, str]], dict[str, str]]:
    """The graph's edges as (from label, to label, edge text) and each node's shape, by label."""
    labels: dict[str, str] = {}
    shapes: dict[str, str] = {}
    pattern = r'^\s+(\w+)(?:\[\("([^"]*)"\)\]|\[/"([^"]*)"/\]|\["([^"]*)"\])$'
    for node, table, query, job_label in re.findall(pattern, text, re.M):
        labels[node] = table or query or job_label
        shapes[labels[node]] = "table" if table else "query" if query else "job"
    edges = set()
    for a, arrow, b in re.findall(r"^\s+(\w+) (-->(?:\|[^|]*\|)?|-\. after \.->) (\w+)$", text, re.M):
        edges.add((labels[a], labels[b], arrow))
    return edges, shapes


def test_jobs_graph_draws_each_jobs_source_to_it_it_to_its_output_and_its_after_edges(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    result = cli_run(_fleet_config(tmp_path, f"sqlite:///{db}"), "jobs", "--graph")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("flowchart LR\n")
    edges, shapes = _mermaid(result.output)
    assert shapes == {"m.AT": "job", "m.BE": "job", "down": "job", "features": "table",
                      "predictions": "table", "predictions_latest": "table", "downstream": "table"}
    assert edges == {
        ("features", "m.AT", "-->|country=AT|"), ("m.AT", "predictions", "-->"),
        ("features", "m.BE", "-->|country=BE|"), ("m.BE", "predictions", "-->"),
        ("predictions_latest", "down", "-->"), ("down", "downstream", "-->"),
        ("m.AT", "down", "-. after .->"), ("m.BE", "down", "-. after .->"),
    }
    every_line = [ln for ln in result.output.splitlines()[1:] if ln.strip()]
    assert len(every_line) == len(shapes) + len(edges)  # nothing else drawn
    assert not db.exists()


def test_runs_of_a_job_no_longer_in_the_config_lists_its_ledger_rows(tmp_path: Path, db_url: str) -> None:
    load_table(db_url, country_frame(20, TWO))
    per_country_models(tmp_path, TWO)
    cfg = write_config(tmp_path, db_url, {"m": matrix_job(TWO)})
    assert cli_run(cfg, "run", "m", *as_of_arg()).exit_code == 0
    assert cli_run(cfg, "run", "m.BE", *as_of_arg()).exit_code == 0
    cfg = write_config(tmp_path, db_url, {"m": matrix_job(["AT"])})  # BE removed from the matrix

    listed = cli_run(cfg, "runs", "--job", "m.BE")
    assert listed.exit_code == 0, listed.output
    rows = _columns(listed.output)
    ledger = rows_of_query(db_url, "SELECT run_id, status FROM scoring_runs WHERE job = 'm.BE' ORDER BY run_id DESC")
    assert [(int(r["run_id"]), r["status"]) for r in rows] == ledger and len(ledger) == 2
    assert {r["job"] for r in rows} == {"m.BE"}
    as_json = cli_run(cfg, "runs", "--job", "m.BE", "--json")
    assert as_json.exit_code == 0 and as_json.output.count('"job": "m.BE"') == 2

    unknown = cli_run(cfg, "runs", "--job", "never")  # neither in the config nor in the ledger
    assert unknown.exit_code == 2 and "never" in unknown.output


def test_the_backfill_limit_is_7320_days() -> None:
    first = date(2000, 1, 1)
    assert MAX_DAYS == 7_320
    assert len(date_range(first, first + timedelta(days=MAX_DAYS - 1))) == 7_320
    with pytest.raises(UsageError, match="has 7321 days; split it"):
        date_range(first, first + timedelta(days=MAX_DAYS))


def test_a_backfill_range_longer_than_7320_days_is_refused_and_nothing_is_written(
    tmp_path: Path, db_url: str
) -> None:
    load_table(db_url, country_frame(5, TWO))
    per_country_models(tmp_path, TWO)
    cfg = write_config(tmp_path, db_url, {"m": matrix_job(TWO)})
    end = date(2000, 1, 1) + timedelta(days=MAX_DAYS)  # 7,321 days, inclusive
    result = cli_run(cfg, "backfill", "m", "--start", "2000-01-01", "--end", end.isoformat())
    assert result.exit_code == 2, result.output
    assert f"the range 2000-01-01..{end} has 7321 days; split it (at most 7320)" in result.output
    assert "Traceback" not in result.output
    assert not has_table(db_url, "scoring_runs") and not has_table(db_url, "predictions")


def test_validate_on_a_fresh_database_passes_a_job_reading_its_upstream_jobs_output(
    tmp_path: Path, db_url: str
) -> None:
    """A downstream job whose query reads what its ``after:`` job publishes cannot be
    checked before that table exists: validate says so and passes (``run --all`` plans it
    after its upstream), where it failed with "no such table" (exit 2). Once the upstream
    ran, the same validate checks the downstream source for real."""
    load_table(db_url, country_frame(30))
    per_country_models(tmp_path)
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "down.sql").write_text(
        "SELECT p.entity_id, f.x1, f.x2, f.x3, f.color FROM up_out p JOIN features f "
        "ON f.entity_id = p.entity_id WHERE p.as_of = :as_of")
    jobs = {"up": {**job(model="models/m_AT.joblib", output="up_out")},
            "down": {**job(model="models/m_AT.joblib", table=None, query="sql/down.sql", as_of_column=None,
                           output="down_out"), "after": ["up"]}}
    cfg = write_config(tmp_path, db_url, jobs)
    fresh = cli_run(cfg, "validate")
    assert fresh.exit_code == 0, fresh.output
    assert re.search(r"down.*source not checked yet: it runs after up, whose output table\(s\) up_out do not "
                     r"exist yet", " ".join(fresh.output.split())), fresh.output
    assert not has_table(db_url, "up_out")  # validate wrote nothing
    assert cli_run(cfg, "run", "--all", "--as-of", "2026-03-31").exit_code == 0
    after = cli_run(cfg, "validate")
    assert after.exit_code == 0 and "source columns present" in after.output.split("down", 1)[1], after.output


def test_jobs_graph_draws_a_query_source_with_the_fleet_tables_its_sql_names(tmp_path: Path) -> None:
    """A query source is its own node, fed by each table of the fleet its SQL names (here
    the upstream job's output and the feature table), not a table node of its file name."""
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "down.sql").write_text(
        "SELECT p.entity_id, f.x1 FROM up_out p JOIN features f ON f.entity_id = p.entity_id\n"
        "WHERE p.as_of = :as_of  -- not predictions_old, nor other.up_out")
    jobs = {"up": job(output="up_out"),
            "down": {**job(table=None, query="sql/down.sql", as_of_column=None, output="down_out"), "after": ["up"]}}
    result = cli_run(write_config(tmp_path, f"sqlite:///{tmp_path / 'never.db'}", jobs), "jobs", "--graph")
    assert result.exit_code == 0, result.output
    edges, shapes = _mermaid(result.output)
    assert shapes == {"up": "job", "down": "job", "features": "table", "up_out": "table",
                      "sql/down.sql": "query", "down_out": "table"}
    assert edges == {
        ("features", "up", "-->"), ("up", "up_out", "-->"),
        ("up_out", "sql/down.sql", "-->"), ("features", "sql/down.sql", "-->"),
        ("sql/down.sql", "down", "-->"), ("down", "down_out", "-->"), ("up", "down", "-. after .->"),
    }


def test_the_api_takes_parallel_from_1_to_64_as_the_command_line_does(tmp_path: Path, sqlite_url: str) -> None:
    from batch_scorer import api

    load_table(sqlite_url, country_frame(10))
    per_country_models(tmp_path)
    cfg = write_config(tmp_path, sqlite_url, {"m": matrix_job()})
    for bad in (0, 65, 100):
        with pytest.raises(UsageError, match="from 1 to 64"):
            api.run(cfg, all_jobs=True, parallel=bad)
    assert not has_table(sqlite_url, "predictions")


def test_the_summary_shows_no_published_rows_for_a_job_that_failed_after_scoring(
    tmp_path: Path, sqlite_url: str
) -> None:
    frame = country_frame(40)
    frame["entity_id"] = frame["entity_id"].astype("Int64")
    frame.loc[frame.index[frame["country"] == "BE"][:2], "entity_id"] = None  # NULL keys: rejected
    load_table(sqlite_url, frame)
    per_country_models(tmp_path)
    cfg = write_config(tmp_path, sqlite_url, {"m": matrix_job(max_rejected_fraction=0)})
    result = cli_run(cfg, "run", "m", *as_of_arg())
    assert result.exit_code == 1, result.output
    lines = {ln.split()[0]: ln.split() for ln in result.output.splitlines() if ln.startswith("m.")}
    assert lines["m.BE"][2:4] == ["failed", "0"] and lines["m.AT"][2:4] == ["succeeded", "40"], lines


def test_backfill_from_python_takes_none_or_no_jobs_with_all_and_usage_error_is_exported(
    tmp_path: Path, sqlite_url: str
) -> None:
    import batch_scorer
    from batch_scorer import api

    assert api.UsageError is batch_scorer.UsageError is UsageError
    load_table(sqlite_url, country_frame(10))
    per_country_models(tmp_path)
    cfg = write_config(tmp_path, sqlite_url, {"m": matrix_job()})
    day = AS_OF.isoformat()
    for jobs in (None, ()):
        results = api.backfill(cfg, jobs, day, day, all_jobs=True)
        assert sorted(r.job for r in results) == [f"m.{c}" for c in COUNTRIES] and results.exit_code == 0
    with pytest.raises(UsageError, match="--all"):
        api.backfill(cfg, None, day, day)


def test_runs_of_a_matrix_name_list_the_runs_of_values_taken_out_of_the_matrix(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, country_frame(10))
    per_country_models(tmp_path)
    cfg = write_config(tmp_path, sqlite_url, {"m": matrix_job()})
    assert cli_run(cfg, "run", "m", *as_of_arg()).exit_code == 0
    write_config(tmp_path, sqlite_url, {"m": matrix_job(COUNTRIES[:-1])})  # the last country's job is gone
    listed = cli_run(cfg, "runs", "--job", "m")
    assert listed.exit_code == 0 and all(f"m.{c}" in listed.output for c in COUNTRIES), listed.output
    gone = cli_run(cfg, "runs", "--job", f"m.{COUNTRIES[-1]}")
    assert gone.exit_code == 0 and f"m.{COUNTRIES[-1]}" in gone.output
