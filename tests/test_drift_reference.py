"""References given at registration: ``store_reference`` profiles reference data (the
training set) as ``reference:<name>:<version>``, and the runs of that model version
compare with it instead of with their first run.

The registry is built elsewhere; these tests call ``store_reference`` directly with a
file model standing in for a registered version, and give the run's plan the stamp a
registry model would carry.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from batch_scorer import api
from batch_scorer.config import load_config
from batch_scorer.executors.local import LocalExecutor
from batch_scorer.executors.threads import ThreadSettings
from batch_scorer.models.loader import LoadedModel, load_model
from batch_scorer.runtime.monitor import (
    MonitorSettings,
    monitor_plan,
    profile_reference,
    reference_chunks,
    reference_rows,
    store_reference,
)
from batch_scorer.runtime.plan import build_plan
from batch_scorer.runtime.run import GroupContext, run_group
from batch_scorer.runtime.spec import RunPlan
from batch_scorer.storage import profiles
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables
from tests.helpers import (
    AS_OF,
    FEATURES,
    OTHER_AS_OF,
    features_frame,
    job,
    load_table,
    query,
    save_model,
    train,
    write_config,
)


def _model(tmp_path: Path) -> tuple[LoadedModel, object]:
    fitted = train("binary")
    return load_model("j", save_model(fitted, tmp_path / "models" / "m.joblib")), fitted


def _counts(url: str, profile_id: str, feature: str) -> list[int]:
    rows = query(url, "SELECT rows FROM feature_profiles WHERE profile_id = :p AND feature = :f ORDER BY bin",
                 p=profile_id, f=feature)
    return [int(r[0]) for r in rows]


def test_a_reference_frame_is_stored_with_exact_deciles_and_replaced_when_stored_again(
    tmp_path: Path, db_url: str
) -> None:
    model, fitted = _model(tmp_path)
    training = features_frame(1_500, seed=1)
    engine = create_engine(db_url)
    try:
        stored = store_reference(engine, "churn", 3, model, training)
        store_reference(engine, "churn", 3, model, training)  # registering again replaces, never duplicates
    finally:
        engine.dispose()
    assert stored.profile_id == "reference:churn:3" and stored.rows == 1_500 and stored.exact
    assert set(stored.columns) == {*FEATURES, "score", "prediction"}
    owners = query(db_url, "SELECT DISTINCT run_id, job, model_name, model_version FROM feature_profiles")
    assert owners == [(None, None, "churn", "3")]
    for feature, values in (("x1", training["x1"].to_numpy()),
                            ("score", fitted.predict_proba(training[FEATURES])[:, 1])):
        edges = np.unique(np.quantile(values[~np.isnan(values)], np.arange(1, 10) / 10))
        null = np.isnan(values)
        expected = np.bincount(np.searchsorted(edges, values[~null], side="left"), minlength=len(edges) + 1)
        assert _counts(db_url, stored.profile_id, feature) == [*expected.tolist(), int(null.sum())]


def test_a_reference_read_twice_from_a_table_equals_the_in_memory_one(tmp_path: Path, db_url: str) -> None:
    model, _ = _model(tmp_path)
    training = features_frame(1_200, seed=4)
    load_table(db_url, training, table="training_set")
    engine = create_engine(db_url)
    try:
        from_table = store_reference(engine, "churn", 1, model, reference_chunks(engine, "training_set", model, 250))
        in_memory = store_reference(engine, "churn", 2, model, training)
        one_pass = store_reference(engine, "churn", 4, model, (training.iloc[i : i + 250] for i in range(0, 1200, 250)))
    finally:
        engine.dispose()
    assert from_table.exact and not one_pass.exact
    for feature in (*FEATURES, "score", "prediction"):
        want = _counts(db_url, in_memory.profile_id, feature)
        assert _counts(db_url, from_table.profile_id, feature) == want
        assert _counts(db_url, one_pass.profile_id, feature) == want  # under the sample size: exact too


def test_runs_of_a_registered_version_compare_with_its_reference(tmp_path: Path, sqlite_url: str) -> None:
    model, _ = _model(tmp_path)
    training = features_frame(2_000, seed=1)
    scored_day = features_frame(2_000, seed=2, as_of=AS_OF)
    scored_day["x3"] = scored_day["x3"] + 4  # the population moved since training
    load_table(sqlite_url, scored_day)
    cfg = load_config(write_config(tmp_path, sqlite_url, {"j": job()}))
    engine = create_engine(sqlite_url)
    try:
        create_tool_tables(engine)
        store_reference(engine, "churn", 3, model, training)
        plan = _as_registered(build_plan(cfg, engine, "j", AS_OF, "manual"), engine, "churn", 3)
        assert plan.monitor is not None and plan.monitor.reference_id == "reference:churn:3"
        with engine.connect() as conn:
            found = profiles.find_reference(conn, job="j", sha256=model.sha256, model_name="churn",
                                            registry_version=3)
        assert found is not None and found.run_id is None
        (attempt,) = run_group(GroupContext(engine, LocalExecutor(ThreadSettings())), [plan])
    finally:
        engine.dispose()
    assert attempt.error is None and attempt.result.drift_status == "alert"
    drifts = {f: (s, r) for f, s, r in query(sqlite_url, "SELECT feature, status, reference_profile FROM drift")}
    assert drifts["x3"] == ("alert", "reference:churn:3") and drifts["x2"] == ("ok", "reference:churn:3")
    # The run's own profile is stored in the reference's bins.
    ref_bins = query(sqlite_url, "SELECT feature, bin, upper FROM feature_profiles WHERE run_id IS NULL "
                                 "ORDER BY feature, bin")
    run_bins = query(sqlite_url, "SELECT feature, bin, upper FROM feature_profiles WHERE run_id = 1 "
                                 "ORDER BY feature, bin")
    assert run_bins == ref_bins


def _as_registered(plan: RunPlan, engine: Engine, name: str, version: int) -> RunPlan:
    """The plan as a registry model's run would have it: the version's name and number on its stamp."""
    stamp = dataclasses.replace(plan.champion.stamp, name=name, registry_version=version)
    monitor = monitor_plan(engine, MonitorSettings(), job=plan.job, as_of=plan.as_of, model=plan.champion.model,
                           stamp=stamp, prediction_kind=plan.prediction_kind, want_score=True,
                           column_types=plan.columns.types)
    return dataclasses.replace(plan, champion=dataclasses.replace(plan.champion, stamp=stamp), monitor=monitor)


def test_a_reference_of_an_unscorable_row_leaves_that_row_out(tmp_path: Path, sqlite_url: str) -> None:
    model, _ = _model(tmp_path)
    training = features_frame(300, seed=1)
    training["x2"] = training["x2"].astype(object)
    training.loc[0, "x2"] = "not a number"  # rejected, as a run rejects it
    engine = create_engine(sqlite_url)
    try:
        stored = store_reference(engine, "churn", 1, model, pd.DataFrame(training))
    finally:
        engine.dispose()
    assert stored.rows == 299


def test_the_rows_a_registration_stores_in_its_own_transaction_are_store_references(
    tmp_path: Path, sqlite_url: str
) -> None:
    model, _ = _model(tmp_path)
    training = features_frame(600, seed=2)
    profile, exact = profile_reference(model, training)
    rows = reference_rows(profile)
    assert exact and {tuple(sorted(r)) for r in rows} == {
        ("bin", "category", "feature", "kind", "lower", "rows", "upper")}
    engine = create_engine(sqlite_url)
    try:
        store_reference(engine, "churn", 7, model, training)
    finally:
        engine.dispose()
    stored = query(sqlite_url, "SELECT feature, kind, bin, lower, upper, category, rows FROM feature_profiles "
                               "ORDER BY feature, bin")
    assert stored == sorted((r["feature"], r["kind"], r["bin"], r["lower"], r["upper"], r["category"], r["rows"])
                            for r in rows)


def test_a_retracted_first_run_stops_being_the_reference_and_the_next_succeeded_run_is(
    tmp_path: Path, sqlite_url: str
) -> None:
    third = OTHER_AS_OF + (OTHER_AS_OF - AS_OF)
    for seed, day in ((1, AS_OF), (2, OTHER_AS_OF), (3, third)):
        load_table(sqlite_url, features_frame(400, seed=seed, as_of=day))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = str(write_config(tmp_path, sqlite_url, {"j": job()}))
    (first,) = api.run(cfg, ["j"], as_of=AS_OF.isoformat())
    (second,) = api.run(cfg, ["j"], as_of=OTHER_AS_OF.isoformat())
    refs = query(sqlite_url, "SELECT DISTINCT reference_profile FROM drift WHERE run_id = :r", r=second.run_id)
    assert refs == [(f"run:{first.run_id}",)]

    api.retract(cfg, first.run_id, note="wrong feature table that day")
    (later,) = api.run(cfg, ["j"], as_of=third.isoformat())
    refs = query(sqlite_url, "SELECT DISTINCT reference_profile FROM drift WHERE run_id = :r", r=later.run_id)
    assert refs == [(f"run:{second.run_id}",)]



def test_prune_keeps_a_retracted_first_run_while_the_runs_made_before_compare_with_it(
    tmp_path: Path, db_url: str
) -> None:
    """A retracted first run stops being the reference of new runs, but the second run's drift
    rows still name its profile: prune keeps it (no drift row points at a profile that is gone),
    and deletes an old retracted run that no run compares with."""
    third = OTHER_AS_OF + (OTHER_AS_OF - AS_OF)
    for seed, day in ((1, AS_OF), (2, OTHER_AS_OF), (3, third)):
        load_table(db_url, features_frame(400, seed=seed, as_of=day))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = str(write_config(tmp_path, db_url, {"j": job()}, retention={"ledger_days": 400}))
    first, second, later = (api.run(cfg, ["j"], as_of=day.isoformat())[0] for day in (AS_OF, OTHER_AS_OF, third))
    api.retract(cfg, first.run_id, note="wrong feature table that day")
    api.retract(cfg, later.run_id, note="a duplicate")
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:  # both retracted runs started long ago
            conn.exec_driver_sql("UPDATE scoring_runs SET started_at = started_at - INTERVAL '500 days'"
                                 if engine.dialect.name == "postgresql" else
                                 "UPDATE scoring_runs SET started_at = datetime(started_at, '-500 days')")
    finally:
        engine.dispose()
    api.prune(cfg)
    kept = [r for (r,) in query(db_url, "SELECT run_id FROM scoring_runs ORDER BY run_id")]
    assert kept == [first.run_id, second.run_id]
    refs = query(db_url, "SELECT DISTINCT reference_profile FROM drift WHERE run_id = :r", r=second.run_id)
    assert refs == [(f"run:{first.run_id}",)]
    assert query(db_url, "SELECT count(*) FROM feature_profiles WHERE profile_id = :p",
                 p=f"run:{first.run_id}")[0][0] > 0


def test_a_sqlite_run_id_is_never_handed_out_again_after_the_ledger_is_emptied_by_hand(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Profiles and output rows are keyed by run id: a reused id would mix an old run into a new one."""
    load_table(sqlite_url, features_frame(400, seed=1, as_of=AS_OF))
    load_table(sqlite_url, features_frame(400, seed=2, as_of=OTHER_AS_OF))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = str(write_config(tmp_path, sqlite_url, {"j": job()}))
    (first,) = api.run(cfg, ["j"], as_of=AS_OF.isoformat())
    engine = create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM scoring_runs")  # an operator's clean-up by hand
    engine.dispose()
    (again,) = api.run(cfg, ["j"], as_of=AS_OF.isoformat())
    assert again.status == "succeeded" and again.run_id > first.run_id
    (later,) = api.run(cfg, ["j"], as_of=OTHER_AS_OF.isoformat())
    refs = query(sqlite_url, "SELECT DISTINCT reference_profile FROM drift WHERE run_id = :r", r=later.run_id)
    assert refs == [(f"run:{again.run_id}",)]  # a usable reference, not one merged with the old run's
