"""``batch-scorer retract RUN_ID`` takes back only what readers see: a failed run and a run a
later run replaced are refused (exit 2, the run named and what to do instead, nothing
changed), and a run scored with challengers leaves its ``_shadow`` rows too.

(That ``_latest`` shows the earlier as_of again after a retract is proved by
tests/test_correct_dates.py::test_retract_takes_a_typo_back_and_latest_shows_what_was_there_before.)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.gaps_support import ledger, rows_of, rows_of_query
from tests.helpers import AS_OF, OTHER_AS_OF, cli_run, features_frame, job, load_table, save_model, train, write_config
from tests.registry_support import ok, registry_config, registry_job

EMPTY_AS_OF = "2026-01-31"  # the source has no rows for it: a run of it fails at publish


def _two_dates(url: str, n: int = 60) -> None:
    load_table(url, pd.concat([features_frame(n, seed=3, as_of=OTHER_AS_OF), features_frame(n, seed=4)]))


def _snapshot(url: str) -> tuple[object, ...]:
    return ledger(url), rows_of(url, "predictions"), rows_of(url, "predictions_latest")


def test_retract_refuses_a_failed_run_and_a_replaced_run_and_changes_nothing(tmp_path: Path, db_url: str) -> None:
    _two_dates(db_url)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job()})
    ok(cfg, "run", "j", "--as-of", str(AS_OF))  # run 1
    ok(cfg, "run", "j", "--as-of", str(AS_OF))  # run 2 replaces run 1
    assert cli_run(cfg, "run", "j", "--as-of", EMPTY_AS_OF).exit_code == 1  # run 3 failed
    assert [r[3:5] for r in ledger(db_url)] == [("succeeded", 2), ("succeeded", None), ("failed", None)]
    before = _snapshot(db_url)

    failed = cli_run(cfg, "retract", "3")
    assert failed.exit_code == 2, failed.output
    assert "run 3 (job j, as_of 2026-01-31) is failed" in failed.output
    assert "nothing to retract" in failed.output
    assert "batch-scorer runs --job j" in failed.output  # what to do: look at the job's runs
    assert "Traceback" not in failed.output

    replaced = cli_run(cfg, "retract", "1")
    assert replaced.exit_code == 2, replaced.output
    assert "run 1 (job j, as_of 2026-03-31)" in replaced.output and "replaced by run 2" in replaced.output
    assert "batch-scorer retract 2" in replaced.output  # what to do: retract the run readers see
    assert "Traceback" not in replaced.output

    assert _snapshot(db_url) == before  # neither refusal deleted a row or touched the ledger
    assert rows_of_query(db_url, "SELECT DISTINCT run_id FROM predictions") == [(2,)]


def test_retract_removes_the_runs_shadow_rows_and_keeps_every_other_runs(tmp_path: Path, db_url: str) -> None:
    _two_dates(db_url)
    config = registry_config(tmp_path, db_url, {"j": registry_job(challengers=["challenger"])})
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "c.joblib")),
       "--alias", "champion")
    ok(config, "models", "register", "churn", str(save_model(train("forest"), tmp_path / "f.joblib")),
       "--alias", "challenger")
    ok(config, "run", "j", "--as-of", str(OTHER_AS_OF))  # run 1: kept
    ok(config, "run", "j", "--as-of", str(AS_OF))  # run 2: retracted
    per_run = "SELECT run_id, count(*) FROM {t} GROUP BY run_id ORDER BY run_id"
    assert rows_of_query(db_url, per_run.format(t="predictions")) == [(1, 60), (2, 60)]
    assert rows_of_query(db_url, per_run.format(t="predictions_shadow")) == [(1, 60), (2, 60)]
    kept = rows_of_query(db_url, "SELECT * FROM predictions_shadow WHERE run_id = 1 ORDER BY entity_id")

    result = cli_run(config, "retract", "2", "--note", "wrong features")
    assert result.exit_code == 0, result.output
    assert "60 rows removed from predictions, 60 shadow rows" in result.output

    assert rows_of_query(db_url, per_run.format(t="predictions")) == [(1, 60)]
    assert rows_of_query(db_url, per_run.format(t="predictions_shadow")) == [(1, 60)]
    assert rows_of_query(db_url, "SELECT * FROM predictions_shadow ORDER BY entity_id") == kept  # untouched
    assert rows_of_query(db_url, "SELECT run_id, status, error FROM scoring_runs ORDER BY run_id") == [
        (1, "succeeded", None), (2, "retracted", "retracted: wrong features")]


def test_retract_forgets_the_metrics_of_the_predictions_it_takes_back(tmp_path: Path, db_url: str) -> None:
    """``model_metrics`` of the retracted run's as_of go in the same transaction (they measured
    predictions no longer published); the other as_of's stay."""
    import sqlalchemy as sa

    frames = [features_frame(80, seed=3, as_of=OTHER_AS_OF), features_frame(80, seed=4)]
    load_table(db_url, pd.concat(frames))
    labels = pd.concat([pd.DataFrame({"entity_id": f["entity_id"], "outcome_date": f["snapshot_date"],
                                      "churned": (f["x2"] > 0).astype(int)}) for f in frames])
    load_table(db_url, labels, table="outcomes", outcome_date=sa.Date())
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    spec = job(labels={"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"})
    cfg = write_config(tmp_path, db_url, {"churn": spec})
    for day in (OTHER_AS_OF, AS_OF):
        assert cli_run(cfg, "run", "churn", "--as-of", day.isoformat()).exit_code == 0
    assert cli_run(cfg, "evaluate", "churn").exit_code == 0
    days = "SELECT DISTINCT as_of FROM model_metrics ORDER BY as_of"
    assert len(rows_of_query(db_url, days)) == 2
    [(run_id,)] = rows_of_query(db_url, "SELECT run_id FROM scoring_runs WHERE as_of = :d", d=AS_OF)
    done = cli_run(cfg, "retract", str(run_id))
    assert done.exit_code == 0 and "model_metrics rows of that as_of" in done.output, done.output
    kept = [str(d)[:10] for (d,) in rows_of_query(db_url, days)]
    assert kept == [OTHER_AS_OF.isoformat()]
