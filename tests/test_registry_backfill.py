"""Registering from a notebook (a fitted estimator and its training data as the drift
reference), and backfills: the alias is resolved once for the whole range, and
``--version N`` pins one version."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from batch_scorer import api
from tests.helpers import FEATURES, cli_run, features_frame, load_table, query, save_model, train, write_config
from tests.helpers import job as path_job
from tests.registry_support import ok, registry_config

DAYS = [date(2026, 3, 29) + timedelta(days=i) for i in range(3)]


def _three_days(url: str) -> None:
    load_table(url, pd.concat([features_frame(100, seed=i, as_of=d) for i, d in enumerate(DAYS)]))


def _versions_by_day(url: str) -> list[tuple[Any, ...]]:
    rows = query(url, "SELECT as_of, model_registry_version, model_version FROM scoring_runs "
                      "WHERE status = 'succeeded' ORDER BY as_of")
    return [(str(d)[:10], v, label) for d, v, label in rows]


def test_register_model_from_a_notebook_stores_the_reference_profile(tmp_path: Path, db_url: str) -> None:
    _three_days(db_url)
    config = registry_config(tmp_path, db_url)
    reference = features_frame(400, seed=1)
    model = train("binary", reference)

    done = api.register_model(config, "churn", model, reference=reference, alias="challenger", note="nb")

    assert (done.created, done.version.version, done.version.kind, done.version.features) == (
        True, 1, "classifier", tuple(FEATURES))
    assert done.event is not None and done.event.action == "register"
    assert done.version.aliases == ("challenger",)  # the version as it is now, as `models list` shows it
    profile = query(db_url, "SELECT feature, sum(rows) FROM feature_profiles WHERE profile_id = 'reference:churn:1' "
                            "GROUP BY feature ORDER BY feature")
    assert profile == sorted([(f, 400) for f in [*FEATURES, "prediction", "score"]])
    again = api.register_model(config, "churn", model)
    assert (again.created, again.version.version, again.version.aliases) == (False, 1, ("challenger",))


def test_a_backfill_keeps_the_version_it_resolved_at_its_start(tmp_path: Path, db_url: str) -> None:
    _three_days(db_url)
    config = registry_config(tmp_path, db_url)
    api.register_model(config, "churn", train("binary"), alias="champion")
    api.register_model(config, "churn", train("forest"))

    def promote_after_the_first_date(as_of: date, results: object) -> None:
        if results is not None and as_of == DAYS[0]:
            api.promote_model(config, "churn", 2)

    results = api.backfill(config, "j", DAYS[0], DAYS[-1], on_date=promote_after_the_first_date)

    assert results.exit_code == 0
    assert query(db_url, "SELECT version FROM model_aliases WHERE alias = 'champion'") == [(2,)]
    assert _versions_by_day(db_url) == [(str(d), 1, "v1") for d in DAYS]


def test_backfill_version_pins_one_registry_version(tmp_path: Path, db_url: str) -> None:
    _three_days(db_url)
    config = registry_config(tmp_path, db_url)
    api.register_model(config, "churn", train("binary"), alias="champion")
    api.register_model(config, "churn", train("forest"))

    ok(config, "backfill", "j", "--start", str(DAYS[0]), "--end", str(DAYS[-1]), "--version", "2")

    assert _versions_by_day(db_url) == [(str(d), 2, "v2") for d in DAYS]
    assert "3 skipped (already succeeded)" in ok(
        config, "backfill", "j", "--start", str(DAYS[0]), "--end", str(DAYS[-1]), "--version", "2")


def test_backfill_version_of_a_model_file_job_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    _three_days(sqlite_url)
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    config = write_config(tmp_path, sqlite_url, {"j": path_job()})
    result = cli_run(config, "backfill", "j", "--start", str(DAYS[0]), "--end", str(DAYS[-1]), "--version", "2")
    assert result.exit_code == 2 and "job 'j'" in result.output and "--version 2" in result.output


def test_a_regressor_registered_with_a_table_reference_is_compared_with_it(tmp_path: Path, db_url: str) -> None:
    """CLI ``--reference TABLE``: read in chunks, profiled as a run profiles (a regressor's
    prediction is its score); the version's runs then compare with that reference."""
    _three_days(db_url)
    load_table(db_url, features_frame(500, seed=7), table="training")
    config = registry_config(tmp_path, db_url)
    model = save_model(train("regressor"), tmp_path / "reg.joblib")

    ok(config, "models", "register", "churn", str(model), "--reference", "training", "--alias", "champion")
    ok(config, "run", "j", "--as-of", str(DAYS[0]))

    profile = query(db_url, "SELECT feature, sum(rows) FROM feature_profiles WHERE profile_id = 'reference:churn:1' "
                            "GROUP BY feature ORDER BY feature")
    assert profile == sorted([(f, 500) for f in [*FEATURES, "score"]])
    drift = query(db_url, "SELECT DISTINCT reference_profile FROM drift")
    assert drift == [("reference:churn:1",)]
    assert query(db_url, "SELECT count(*) FROM drift WHERE feature = 'score' AND psi_reference IS NOT NULL") == [(1,)]


def test_a_reference_without_the_models_features_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    config = registry_config(tmp_path, sqlite_url)
    load_table(sqlite_url, features_frame(50, seed=7).drop(columns=["x2"]), table="training")
    result = cli_run(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "m.joblib")),
                     "--reference", "training")
    assert result.exit_code == 2, result.output
    assert "x2" in result.output and "Traceback" not in result.output
    assert query(sqlite_url, "SELECT count(*) FROM model_versions") == [(0,)]


def test_a_reference_given_with_bytes_already_registered(tmp_path: Path, sqlite_url: str) -> None:
    """Registered without a reference, the same bytes again with one: it is stored. Given
    once more (other data): the version keeps its first reference, and the log says so."""
    config = registry_config(tmp_path, sqlite_url)
    model = train("binary")
    api.register_model(config, "churn", model)
    count = "SELECT count(*), sum(rows) FROM feature_profiles WHERE profile_id = 'reference:churn:1'"
    assert query(sqlite_url, count) == [(0, None)]

    again = api.register_model(config, "churn", model, reference=features_frame(300, seed=4))
    assert again.created is False
    stored = query(sqlite_url, count)
    assert stored[0][0] > 0

    result = cli_run(config, "models", "register", "churn", str(save_model(model, tmp_path / "same.joblib")))
    assert result.exit_code == 0
    load_table(sqlite_url, features_frame(80, seed=5), table="other_training")
    third = cli_run(config, "models", "register", "churn", str(tmp_path / "same.joblib"),
                    "--reference", "other_training")
    assert third.exit_code == 0, third.output
    assert "already registered with a drift reference" in third.output
    assert query(sqlite_url, count) == stored


def test_backfill_takes_a_version_read_from_a_dataframe(tmp_path: Path, sqlite_url: str) -> None:
    import numpy as np

    _three_days(sqlite_url)
    config = registry_config(tmp_path, sqlite_url)
    api.register_model(config, "churn", train("binary"), alias="champion")
    api.register_model(config, "churn", train("forest"))
    results = api.backfill(config, "j", DAYS[0], DAYS[0], version=np.int64(2))  # e.g. from a versions frame
    assert results.exit_code == 0
    assert _versions_by_day(sqlite_url) == [(str(DAYS[0]), 2, "v2")]
