"""Errors met outside a job's run speak of what the user was doing: registering a model
(not "job 'registry X'" and "update model.sha256"), a reference table given on the
command line or from Python (not "fix source.table in the config"), and a job's labels
source (``labels.table``, not ``source.table``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression

from batch_scorer import api
from batch_scorer.errors import ModelError, SourceError
from batch_scorer.storage.db import create_engine
from tests.helpers import AS_OF, cli_run, features_frame, job, load_table, query, save_model, train, write_config


def _versions(url: str) -> int:
    """Model versions stored (0 when the registry tables were not even created)."""
    engine = create_engine(url)
    try:
        if not sa.inspect(engine).has_table("model_versions"):
            return 0
    finally:
        engine.dispose()
    return int(query(url, "SELECT count(*) FROM model_versions")[0][0])


def _cfg(tmp_path: Path, url: str, **jobs: dict) -> Path:
    return write_config(tmp_path, url, jobs)


def test_registering_an_unfitted_estimator_says_so_without_job_or_config_advice(
    tmp_path: Path, sqlite_url: str
) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    with pytest.raises(ModelError) as caught:
        api.register_model(str(cfg), "churn", LogisticRegression())
    text = str(caught.value)
    assert text.startswith("registering model 'churn': ") and "unfitted LogisticRegression" in text
    assert "register it again" in text and "model.sha256" not in text and "job '" not in text
    assert _versions(sqlite_url) == 0


def test_a_missing_reference_table_names_the_reference_and_the_argument(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    with pytest.raises(SourceError) as caught:
        api.register_model(str(cfg), "churn", train("binary"), reference="training_rows")
    text = str(caught.value)
    assert text.startswith("reference table 'training_rows' of model ") and "does not exist" in text
    assert "--reference" in text and "source.table" not in text and "job '" not in text
    save_model(train("binary"), tmp_path / "m.joblib")
    result = cli_run(cfg, "models", "register", "churn", str(tmp_path / "m.joblib"), "--reference", "training_rows")
    assert result.exit_code == 2 and "reference table 'training_rows'" in result.output
    assert _versions(sqlite_url) == 0  # nothing half-registered


def test_a_missing_labels_table_points_at_labels_table(tmp_path: Path, sqlite_url: str) -> None:
    load_table(sqlite_url, features_frame(20, as_of=AS_OF))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    labels = {"table": "outcomez", "as_of_column": "outcome_date", "label_column": "churned"}
    cfg = _cfg(tmp_path, sqlite_url, j=job(labels=labels))
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    result = cli_run(cfg, "evaluate", "j")
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "labels table 'outcomez' does not exist" in text and "fix labels.table in the config" in text
    assert "source.table" not in text and "Traceback" not in text


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_registering_a_path_that_is_no_model_file_names_the_command_not_a_job(
    tmp_path: Path, sqlite_url: str, make: str
) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    path = tmp_path / "nowhere.joblib"
    if make == "directory":
        path.mkdir()
    with pytest.raises(ModelError) as caught:
        api.register_model(str(cfg), "churn", str(path))
    text = str(caught.value)
    assert text.startswith("models register:") and str(path) in text, text
    assert "job '" not in text and "model.path" not in text, text
    assert _versions(sqlite_url) == 0
