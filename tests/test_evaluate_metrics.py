"""``evaluate``: realized performance of published predictions, on SQLite and PostgreSQL.

Every figure equals sklearn.metrics computed here, independently, on the rows of the
predictions and labels tables joined in pandas; late labels replace earlier figures;
the champion and a challenger (scored in shadow by a real run) are both evaluated.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn import metrics as skm

from batch_scorer.config import load_config
from batch_scorer.executors.local import LocalExecutor
from batch_scorer.executors.threads import ThreadSettings
from batch_scorer.models.loader import load_model
from batch_scorer.runtime.plan import build_plan
from batch_scorer.runtime.run import GroupContext, run_group
from batch_scorer.runtime.spec import Scorer, shadow_definition
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables
from batch_scorer.storage.ledger import ModelStamp
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

N = 800


def _outcomes(frame: pd.DataFrame, day: date, share: float, seed: int = 0) -> pd.DataFrame:
    """Labels for a share of the entities (the rest not known yet), plus two unknown entities."""
    rng = np.random.default_rng(seed)
    signal = np.nan_to_num(frame["x1"].to_numpy()) + frame["x2"].to_numpy() + rng.normal(0, 0.8, len(frame))
    out = pd.DataFrame({"entity_id": frame["entity_id"], "outcome_date": day, "churned": (signal > 0).astype(int)})
    out = out.iloc[: int(len(out) * share)]
    strangers = pd.DataFrame({"entity_id": [10_001, 10_002], "outcome_date": day, "churned": [1, 0]})
    return pd.concat([out, strangers], ignore_index=True)


def _load_outcomes(url: str, frame: pd.DataFrame) -> None:
    load_table(url, frame, table="outcomes", outcome_date=sa.Date())


def _binary_setup(tmp_path: Path, url: str) -> tuple[Path, pd.DataFrame]:
    frame = pd.concat([features_frame(N, seed=3, as_of=AS_OF), features_frame(N, seed=4, as_of=OTHER_AS_OF)])
    load_table(url, frame)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    labels = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"}
    return write_config(tmp_path, url, {"j": job(labels=labels)}), frame


def _expected(url: str, table: str = "predictions", where: str = "") -> dict[tuple[str, str], tuple[float, int]]:
    """The binary metrics sklearn gives on the predictions joined to the outcomes, per as_of."""
    preds = published(url, table)
    if where:
        preds = preds.query(where)
    outcomes = published(url, "outcomes")
    preds["as_of"] = preds["as_of"].astype(str).str[:10]
    outcomes["as_of"] = outcomes["outcome_date"].astype(str).str[:10]
    joined = preds.merge(outcomes, on=["entity_id", "as_of"])
    out = {}
    for day, part in joined.groupby("as_of"):
        y, p = part["churned"].astype(int).to_numpy(), part["score"].astype(float).to_numpy()
        n = len(part)
        out[(day, "roc_auc")] = (skm.roc_auc_score(y, p), n)
        out[(day, "log_loss")] = (skm.log_loss(y, p, labels=[0, 1]), n)
        out[(day, "brier")] = (skm.brier_score_loss(y, p), n)
        out[(day, "accuracy")] = (skm.accuracy_score(y, part["prediction"].astype(int)), n)
    return out


def _stored(url: str, role: str = "champion") -> dict[tuple[str, str], tuple[float, int]]:
    rows = query(url, "SELECT as_of, metric, value, rows FROM model_metrics WHERE role = :r", r=role)
    return {(str(d)[:10], m): (float(v), int(n)) for d, m, v, n in rows}


def _assert_same(stored: dict[tuple[str, str], tuple[float, int]],
                 expected: dict[tuple[str, str], tuple[float, int]]) -> None:
    assert stored.keys() == expected.keys()
    for key, (value, rows) in expected.items():
        assert stored[key][1] == rows, key
        assert stored[key][0] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def test_evaluate_figures_equal_sklearn_on_the_same_joined_rows(tmp_path: Path, db_url: str) -> None:
    cfg, frame = _binary_setup(tmp_path, db_url)
    _load_outcomes(db_url, _outcomes(frame[frame["snapshot_date"] == AS_OF], AS_OF, share=0.7))
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert cli_run(cfg, "run", "j", "--as-of", OTHER_AS_OF.isoformat()).exit_code == 0

    result = cli_run(cfg, "evaluate")
    assert result.exit_code == 0, result.output
    assert "1 as_of(s) evaluated" in result.output and "1 as_of(s) without labels yet" in result.output
    expected = _expected(db_url)
    assert {d for d, _ in expected} == {AS_OF.isoformat()} and expected[(AS_OF.isoformat(), "accuracy")][1] == 560
    _assert_same(_stored(db_url), expected)
    version = query(db_url, "SELECT DISTINCT model_version FROM predictions")[0][0]
    assert query(db_url, "SELECT DISTINCT job, model_version, challenger FROM model_metrics") == [("j", version, None)]


def test_late_labels_replace_the_earlier_figures_of_those_as_ofs(tmp_path: Path, db_url: str) -> None:
    cfg, frame = _binary_setup(tmp_path, db_url)
    first, second = frame[frame["snapshot_date"] == AS_OF], frame[frame["snapshot_date"] == OTHER_AS_OF]
    _load_outcomes(db_url, pd.concat([_outcomes(first, AS_OF, 0.3), _outcomes(second, OTHER_AS_OF, 1.0, seed=1)]))
    for day in (AS_OF, OTHER_AS_OF):
        assert cli_run(cfg, "run", "j", "--as-of", day.isoformat()).exit_code == 0
    assert cli_run(cfg, "evaluate", "j").exit_code == 0
    early = _stored(db_url)
    assert early[(AS_OF.isoformat(), "accuracy")][1] == 240

    # The rest of the first as_of's outcomes arrive; the other as_of's labels are purged meanwhile.
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM outcomes"))
    engine.dispose()
    _load_outcomes(db_url, _outcomes(first, AS_OF, 1.0))
    assert cli_run(cfg, "evaluate", "j").exit_code == 0

    late = _stored(db_url)
    assert late[(AS_OF.isoformat(), "accuracy")][1] == N
    _assert_same({k: v for k, v in late.items() if k[0] == AS_OF.isoformat()}, _expected(db_url))
    kept = {k: v for k, v in late.items() if k[0] == OTHER_AS_OF.isoformat()}
    assert kept == {k: v for k, v in early.items() if k[0] == OTHER_AS_OF.isoformat()} and kept  # left as they were
    assert query(db_url, "SELECT count(*) FROM model_metrics") == [(8,)]  # 4 metrics x 2 as_ofs, no duplicates


def test_the_champion_and_a_challenger_scored_in_shadow_are_both_evaluated(tmp_path: Path, db_url: str) -> None:
    cfg_path, frame = _binary_setup(tmp_path, db_url)
    _load_outcomes(db_url, _outcomes(frame[frame["snapshot_date"] == AS_OF], AS_OF, share=1.0))
    challenger = load_model("j", save_model(train("forest"), tmp_path / "models" / "c.joblib"))
    cfg = load_config(cfg_path)
    engine = create_engine(db_url)
    try:
        create_tool_tables(engine)
        plan = build_plan(cfg, engine, "j", AS_OF, "manual")
        stamp = ModelStamp(version="v2", sha256=challenger.sha256)
        plan = dataclasses.replace(plan, challengers=(Scorer("challenger", "candidate", challenger, stamp),))
        plan = dataclasses.replace(plan, shadow=shadow_definition(plan))  # what a job with challengers: gets
        (attempt,) = run_group(GroupContext(engine, LocalExecutor(ThreadSettings())), [plan])
    finally:
        engine.dispose()
    assert attempt.error is None, attempt.error
    assert len(published(db_url, "predictions_shadow")) == N

    result = cli_run(cfg_path, "evaluate", "j")
    assert result.exit_code == 0, result.output
    _assert_same(_stored(db_url), _expected(db_url))
    _assert_same(_stored(db_url, "challenger"), _expected(db_url, "predictions_shadow"))
    assert query(db_url, "SELECT DISTINCT model_version, challenger FROM model_metrics WHERE role = 'challenger'") \
        == [("v2", "candidate")]


def test_a_regressor_gets_rmse_mae_and_r2_from_a_labels_query(tmp_path: Path, sqlite_url: str) -> None:
    frame = features_frame(N, seed=3, as_of=AS_OF)
    load_table(sqlite_url, frame)
    model = train("regressor")
    save_model(model, tmp_path / "models" / "m.joblib")
    rng = np.random.default_rng(5)
    actual = model.predict(frame[FEATURES]) + rng.normal(0, 1, N)
    load_table(sqlite_url, pd.DataFrame({"entity_id": frame["entity_id"], "day": AS_OF.isoformat(), "spend": actual}),
               table="spend")
    (tmp_path / "labels.sql").write_text("SELECT entity_id, day AS as_of, spend FROM spend WHERE day = :as_of")
    cfg = write_config(tmp_path, sqlite_url, {"r": job(labels={"query": "labels.sql", "label_column": "spend"})})
    assert cli_run(cfg, "run", "r", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert cli_run(cfg, "evaluate", "r").exit_code == 0

    preds = published(sqlite_url).sort_values("entity_id")
    y, p = actual[preds["entity_id"].to_numpy() - 1], preds["prediction"].astype(float).to_numpy()
    stored = {m: (v, n) for m, v, n in query(sqlite_url, "SELECT metric, value, rows FROM model_metrics")}
    assert stored["rmse"] == (pytest.approx(np.sqrt(skm.mean_squared_error(y, p)), rel=1e-12), N)
    assert stored["mae"] == (pytest.approx(skm.mean_absolute_error(y, p), rel=1e-12), N)
    assert stored["r2"] == (pytest.approx(skm.r2_score(y, p), rel=1e-12), N)


def test_a_multiclass_job_gets_accuracy_and_says_why_not_log_loss(tmp_path: Path, sqlite_url: str) -> None:
    frame = features_frame(N, seed=3, as_of=AS_OF)
    load_table(sqlite_url, frame)
    model = train("multiclass")
    save_model(model, tmp_path / "models" / "m.joblib")
    truth = np.where(frame["x2"] > 0, "high", "low")
    _load_outcomes(sqlite_url, pd.DataFrame({"entity_id": frame["entity_id"], "outcome_date": AS_OF, "churned": truth}))
    labels = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"}
    cfg = write_config(tmp_path, sqlite_url, {"m": job(labels=labels)})
    assert cli_run(cfg, "run", "m", "--as-of", AS_OF.isoformat()).exit_code == 0
    result = cli_run(cfg, "evaluate", "m")
    assert result.exit_code == 0 and "log_loss and brier not computed" in result.output
    preds = published(sqlite_url).sort_values("entity_id")
    want = skm.accuracy_score(truth[preds["entity_id"].to_numpy() - 1], preds["prediction"])
    assert query(sqlite_url, "SELECT metric, value, rows FROM model_metrics") == [("accuracy", pytest.approx(want), N)]


def test_a_job_without_labels_or_a_labels_table_without_the_column_is_exit_2(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(20, as_of=AS_OF))
    _load_outcomes(sqlite_url, pd.DataFrame({"entity_id": [1], "outcome_date": [AS_OF], "churned": [1]}))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    wrong = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churn_flag"}
    cfg = write_config(tmp_path, sqlite_url, {"plain": job(), "typo": job(labels=wrong)})
    result = cli_run(cfg, "evaluate", "plain")
    assert result.exit_code == 2 and "have no labels: section" in result.output
    result = cli_run(cfg, "evaluate", "typo")
    assert result.exit_code == 2 and "lacks column(s) ['churn_flag']" in result.output
    assert "Traceback" not in result.output


def test_boolean_labels_meet_a_model_of_classes_0_and_1(tmp_path: Path, db_url: str) -> None:
    """A BOOLEAN label column (true/false on PostgreSQL, 1/0 on SQLite) is the classes 1/0."""
    cfg, frame = _binary_setup(tmp_path, db_url)
    outcomes = _outcomes(frame[frame["snapshot_date"] == AS_OF], AS_OF, share=1.0)
    load_table(db_url, outcomes.assign(churned=outcomes["churned"].astype(bool)), table="outcomes",
               outcome_date=sa.Date(), churned=sa.Boolean())
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    result = cli_run(cfg, "evaluate", "j")
    assert result.exit_code == 0, result.output
    stored = _stored(db_url)
    _assert_same(stored, _expected(db_url))
    assert stored[(AS_OF.isoformat(), "accuracy")][0] > 0.7  # the labels were understood, not all "wrong"


def test_a_model_of_classes_false_and_true_meets_labels_0_and_1(tmp_path: Path, sqlite_url: str) -> None:
    frame = features_frame(N, seed=3, as_of=AS_OF)
    load_table(sqlite_url, frame)
    train_on = features_frame(400, seed=1)
    signal = np.nan_to_num(train_on["x1"].to_numpy()) + train_on["x2"].to_numpy()
    model = train("binary")
    model.fit(train_on[FEATURES], signal > 0)  # classes_ [False, True]
    save_model(model, tmp_path / "models" / "m.joblib")
    _load_outcomes(sqlite_url, _outcomes(frame, AS_OF, share=1.0))  # churned 0/1
    labels = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"}
    cfg = write_config(tmp_path, sqlite_url, {"j": job(labels=labels)})
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert cli_run(cfg, "evaluate", "j").exit_code == 0

    preds = published(sqlite_url).sort_values("entity_id")
    truth = _outcomes(frame, AS_OF, share=1.0).set_index("entity_id").loc[preds["entity_id"], "churned"].to_numpy()
    want = model.predict(frame.set_index("entity_id").loc[preds["entity_id"], FEATURES])
    stored = {metric: value for (_, metric), (value, _) in _stored(sqlite_url).items()}
    assert stored["accuracy"] == pytest.approx(skm.accuracy_score(truth, want.astype(int)))
    assert stored["roc_auc"] == pytest.approx(skm.roc_auc_score(truth, preds["score"].astype(float)))


def test_a_key_labelled_twice_differently_is_left_out_and_said_alike_is_kept_once(
    tmp_path: Path, sqlite_url: str
) -> None:
    cfg, frame = _binary_setup(tmp_path, sqlite_url)
    outcomes = _outcomes(frame[frame["snapshot_date"] == AS_OF], AS_OF, share=1.0).head(N)
    repeated = outcomes.head(10)  # the same label again: still one row each
    flipped = outcomes.iloc[10:13].assign(churned=1 - outcomes.iloc[10:13]["churned"])  # which one is true?
    _load_outcomes(sqlite_url, pd.concat([outcomes, repeated, flipped], ignore_index=True))
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    result = cli_run(cfg, "evaluate", "j")
    assert result.exit_code == 0, result.output
    assert "3 key(s) labelled twice with different labels were left out" in " ".join(result.output.split())

    preds = published(sqlite_url).query("as_of.astype('str').str[:10] == @AS_OF.isoformat()", engine="python")
    joined = preds.merge(outcomes.drop(index=range(10, 13)), on="entity_id")
    y = joined["churned"].astype(int)
    stored = _stored(sqlite_url)
    assert stored[(AS_OF.isoformat(), "accuracy")] == (pytest.approx(skm.accuracy_score(y, joined["prediction"])),
                                                       N - 3)
    assert stored[(AS_OF.isoformat(), "roc_auc")][0] == pytest.approx(skm.roc_auc_score(y, joined["score"]))


def test_a_label_column_none_of_whose_values_is_a_class_is_exit_2_and_keeps_the_figures(
    tmp_path: Path, sqlite_url: str
) -> None:
    cfg, frame = _binary_setup(tmp_path, sqlite_url)
    outcomes = _outcomes(frame[frame["snapshot_date"] == AS_OF], AS_OF, share=1.0)
    tier = np.where(outcomes["churned"] == 1, "gold", "bronze")
    _load_outcomes(sqlite_url, outcomes.assign(tier=tier))
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert cli_run(cfg, "evaluate", "j").exit_code == 0
    before = _stored(sqlite_url)

    cfg.write_text(cfg.read_text().replace("label_column: churned", "label_column: tier"))
    result = cli_run(cfg, "evaluate", "j")
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "none of the labels" in text and "['bronze', 'gold']" in text and "labels.label_column 'tier'" in text
    assert _stored(sqlite_url) == before  # nothing replaced


def test_a_job_that_cannot_be_evaluated_spoils_no_other(tmp_path: Path, sqlite_url: str) -> None:
    """Three jobs with labels; the second's model is gone since it ran: the others are
    evaluated and stored; the CLI names the failure and exits 2; from Python the error is
    raised after every job (``.evaluations``), or returned with ``check=False``."""
    from batch_scorer import api
    from batch_scorer.errors import BatchScorerError

    frame = features_frame(N, seed=3, as_of=AS_OF)
    load_table(sqlite_url, frame)
    _load_outcomes(sqlite_url, _outcomes(frame, AS_OF, share=0.7))
    labels = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"}
    jobs = {}
    for name in ("a", "b", "c"):
        save_model(train("binary"), tmp_path / "models" / f"{name}.joblib")
        jobs[name] = job(model=f"models/{name}.joblib", labels=labels)
    cfg = write_config(tmp_path, sqlite_url, jobs)
    assert cli_run(cfg, "run", "--all", "--as-of", AS_OF.isoformat()).exit_code == 0
    (tmp_path / "models" / "b.joblib").unlink()
    result = cli_run(cfg, "evaluate")
    assert result.exit_code == 2, result.output
    assert "a: 1 as_of(s) evaluated" in result.output and "c: 1 as_of(s) evaluated" in result.output
    assert "b: not evaluated" in result.output and "Error: " in result.output
    assert {j for (j,) in query(sqlite_url, "SELECT DISTINCT job FROM model_metrics")} == {"a", "c"}
    with pytest.raises(BatchScorerError) as raised:
        api.evaluate(cfg)
    assert [e.job for e in raised.value.evaluations] == ["a", "b", "c"]  # type: ignore[attr-defined]
    returned = api.evaluate(cfg, check=False)
    assert [(e.job, e.error is None, e.exit_code) for e in returned] == [("a", True, 0), ("b", False, 2),
                                                                           ("c", True, 0)]


def test_evaluate_keeps_the_figures_of_an_as_of_that_prune_cut_down(tmp_path: Path, db_url: str) -> None:
    """prune keeps an old as_of's rows that _latest still shows (entities gone since): the
    figures computed on the whole as_of stay; evaluate does not recompute them on what is left."""
    old = features_frame(N, seed=3, as_of=OTHER_AS_OF)
    new = features_frame(N, seed=4, as_of=AS_OF)
    new = new[new["entity_id"] > 5]  # entities 1..5 are gone by AS_OF: prune keeps their OTHER_AS_OF rows
    load_table(db_url, pd.concat([old, new]))
    _load_outcomes(db_url, _outcomes(old, OTHER_AS_OF, share=1.0))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    labels = {"table": "outcomes", "as_of_column": "outcome_date", "label_column": "churned"}
    cfg = write_config(tmp_path, db_url, {"j": job(labels=labels)}, retention={"predictions_keep_as_ofs": 1})
    for day in (OTHER_AS_OF, AS_OF):
        assert cli_run(cfg, "run", "j", "--as-of", day.isoformat()).exit_code == 0
    assert cli_run(cfg, "evaluate", "j").exit_code == 0
    before = _stored(db_url)
    assert {rows for _, rows in before.values()} == {N}
    assert cli_run(cfg, "prune", "j").exit_code == 0
    left = query(db_url, "SELECT count(*) FROM predictions WHERE as_of = :d", d=OTHER_AS_OF)
    assert left == [(5,)]
    result = cli_run(cfg, "evaluate", "j")
    assert result.exit_code == 0, result.output
    assert "prune removed some of their rows" in result.output
    assert _stored(db_url) == before
