"""promote checks the version against every job using the name before the alias moves:
the job's source must have the model's columns, the output table must take its kind of
prediction, output.score: true needs predict_proba. A refusal is exit 2 naming the job
and what does not fit, and leaves the alias and its events as they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from tests.helpers import AS_OF, cli_run, features_frame, query, save_model, train
from tests.registry_support import ok, registry_config, registry_job, setup_source


def _aliases(url: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT alias, version FROM model_aliases ORDER BY alias")


def _events(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM model_alias_events")[0][0])


def test_promote_refuses_a_version_whose_columns_a_job_source_lacks(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    jobs = {"segments": {**registry_job("churn_{country}"), "matrix": {"country": ["DE", "FR"]}},
            "other": registry_job("unrelated")}
    config = registry_config(tmp_path, db_url, jobs)
    ok(config, "models", "register", "churn_DE", str(save_model(train("binary"), tmp_path / "m1.joblib")),
       "--alias", "champion")
    frame = features_frame(300, seed=1).assign(tenure=np.arange(300.0))
    wider = LogisticRegression().fit(frame[["x2", "tenure"]], (frame["x2"] > 0).astype(int))
    ok(config, "models", "register", "churn_DE", str(save_model(wider, tmp_path / "m2.joblib")))

    refused = cli_run(config, "models", "promote", "churn_DE", "2")

    assert refused.exit_code == 2
    assert "job 'segments.DE'" in refused.output and "'tenure'" in refused.output
    assert "segments.FR" not in refused.output  # churn_FR is another name
    assert _aliases(db_url) == [("champion", 1)] and _events(db_url) == 1


def test_promote_refuses_a_regressor_for_a_job_writing_a_classifiers_table(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config = registry_config(tmp_path, db_url)
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "c.joblib")),
       "--alias", "champion")
    ok(config, "run", "j", "--as-of", str(AS_OF))  # creates the classifier's output table
    ok(config, "models", "register", "churn", str(save_model(train("regressor"), tmp_path / "r.joblib")))

    refused = cli_run(config, "models", "promote", "churn", "2")

    assert refused.exit_code == 2
    assert "job 'j'" in refused.output and "prediction column" in refused.output
    assert _aliases(db_url) == [("champion", 1)] and _events(db_url) == 1


def test_promote_refuses_a_regressor_for_a_text_class_classifiers_table(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config = registry_config(tmp_path, db_url)
    ok(config, "models", "register", "churn", str(save_model(train("multiclass"), tmp_path / "c.joblib")),
       "--alias", "champion")
    ok(config, "run", "j", "--as-of", str(AS_OF))  # text predictions: any value would fit the column
    ok(config, "models", "register", "churn", str(save_model(train("regressor"), tmp_path / "r.joblib")))

    refused = cli_run(config, "models", "promote", "churn", "2")

    assert refused.exit_code == 2
    assert "job 'j'" in refused.output and "regressor" in refused.output and "a classifier's" in refused.output
    assert _aliases(db_url) == [("champion", 1)]


def test_promote_refuses_a_model_without_predict_proba_when_the_job_wants_a_score(
    tmp_path: Path, db_url: str
) -> None:
    setup_source(db_url)
    spec = registry_job()
    spec["output"]["score"] = True
    config = registry_config(tmp_path, db_url, {"j": spec})
    ok(config, "models", "register", "churn", str(save_model(train("regressor"), tmp_path / "r.joblib")))

    refused = cli_run(config, "models", "promote", "churn", "1")

    assert refused.exit_code == 2 and "job 'j'" in refused.output and "output.score is true" in refused.output
    assert _aliases(db_url) == []


def test_promote_of_a_version_that_does_not_exist_names_the_registered_ones(tmp_path: Path, sqlite_url: str) -> None:
    setup_source(sqlite_url)
    config = registry_config(tmp_path, sqlite_url)
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "m.joblib")))
    refused = cli_run(config, "models", "promote", "churn", "7")
    assert refused.exit_code == 2 and "no version 7" in refused.output and "v1" in refused.output


def test_rollback_without_an_earlier_version_is_refused_clearly(tmp_path: Path, sqlite_url: str) -> None:
    setup_source(sqlite_url)
    config = registry_config(tmp_path, sqlite_url)
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "m.joblib")),
       "--alias", "champion")
    refused = cli_run(config, "models", "rollback", "churn")
    assert refused.exit_code == 2 and "nothing to roll back to" in refused.output
    missing = cli_run(config, "models", "rollback", "churn", "--alias", "challenger")
    assert missing.exit_code == 2 and "no alias 'challenger'" in missing.output


def test_a_run_of_a_name_with_no_champion_says_how_to_set_one(tmp_path: Path, sqlite_url: str) -> None:
    setup_source(sqlite_url)
    config = registry_config(tmp_path, sqlite_url)
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "m.joblib")))
    result = cli_run(config, "run", "j", "--as-of", str(AS_OF))
    assert result.exit_code == 2
    assert "job 'j'" in result.output and "no alias 'champion'" in result.output and "models promote" in result.output
