"""The model file: another scikit-learn version, corrupt files, non-models, no
``predict_proba`` when a score is required, the wrong output shape, and files
that others could rewrite."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from batch_scorer.models.loader import LoadedModel
from tests.baddata_support import runs, tables
from tests.helpers import (
    AS_OF,
    FEATURES,
    cli_run,
    features_frame,
    job,
    load_table,
    preprocessor,
    published,
    save_model,
    train,
    write_config,
)

OLD_SKLEARN = "0.24.2"


def _pickled_with(model: Any, version: str) -> Any:
    """Make ``model`` pickle as if scikit-learn ``version`` had saved it (its state
    carries ``_sklearn_version``; no second scikit-learn install needed)."""
    state = model.__getstate__()
    state["_sklearn_version"] = version
    model.__getstate__ = lambda: state
    return model


def _project(tmp_path: Path, url: str, model: Any = None, n: int = 40, score: Any = None, **job_kw: Any) -> Path:
    load_table(url, features_frame(n, seed=3))
    path = tmp_path / "models" / "m.joblib"
    if model is not None:
        save_model(model, path)
    spec = job(**job_kw)
    if score is not None:
        spec["output"]["score"] = score
    return write_config(tmp_path, url, {"j": spec})


def _nothing_written(url: str) -> None:
    assert published(url).empty
    assert not [r for r in runs(url) if r["status"] in ("succeeded", "running")]


def test_model_pickled_with_another_sklearn_version_is_refused_naming_both(
    tmp_path: Path, sqlite_url: str
) -> None:
    cfg = _project(tmp_path, sqlite_url, _pickled_with(train("binary"), OLD_SKLEARN))

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 2, result.output
    assert f"pickled with scikit-learn {OLD_SKLEARN}" in result.output
    assert f"scikit-learn {sklearn.__version__} is installed" in result.output
    assert "allow_version_mismatch: true" in result.output
    assert tables(sqlite_url) == {"features"}  # nothing written, not even the ledger


def test_allowed_version_mismatch_runs_and_records_the_pickling_version(tmp_path: Path, db_url: str) -> None:
    cfg = _project(tmp_path, db_url, _pickled_with(train("binary"), OLD_SKLEARN), allow_version_mismatch=True)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 0, result.output
    assert f"model pickled with scikit-learn {OLD_SKLEARN}" in result.output  # the warning
    assert runs(db_url)[-1]["model_sklearn_version"] == OLD_SKLEARN


def test_matching_version_is_recorded_on_the_run(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url, train("binary"))
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert runs(sqlite_url)[-1]["model_sklearn_version"] == sklearn.__version__


def _truncated(path: Path) -> None:
    joblib.dump(train("binary"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(2048))


def _not_a_model(path: Path) -> None:
    joblib.dump({"coef": [1.0, 2.0], "note": "weights, not an estimator"}, path)


def _plain_pickle_of_array(path: Path) -> None:
    path.write_bytes(pickle.dumps(np.arange(10)))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_truncated, "cannot load model file"),
        (_garbage, "cannot load model file"),
        (_not_a_model, "holds a dict, not a model with a predict() method"),
        (_plain_pickle_of_array, "holds a ndarray, not a model with a predict() method"),
    ],
    ids=["truncated", "garbage", "dict", "array"],
)
def test_broken_or_non_model_file_exits_2_and_writes_nothing(
    tmp_path: Path, db_url: str, make: Any, needle: str
) -> None:
    cfg = _project(tmp_path, db_url)
    (tmp_path / "models").mkdir(exist_ok=True)
    make(tmp_path / "models" / "m.joblib")

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 2, result.output
    assert "Error: job 'j'" in result.output and needle in result.output
    assert "Traceback" not in result.output
    assert tables(db_url) == {"features"}


@pytest.mark.parametrize("kind", ["regressor", "svm"])
def test_score_required_from_a_model_without_predict_proba_exits_2(tmp_path: Path, db_url: str, kind: str) -> None:
    if kind == "regressor":
        model = train("regressor")
    else:
        frame = features_frame(300, seed=1)
        model = Pipeline([("prep", preprocessor()), ("m", LinearSVC())]).fit(frame[FEATURES], frame["x2"] > 0)
    cfg = _project(tmp_path, db_url, model, score=True)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 2, result.output
    assert "output.score is true" in result.output and "predict_proba" in result.output
    assert tables(db_url) == {"features"}


def test_score_auto_leaves_it_null_and_score_false_skips_it(tmp_path: Path, sqlite_url: str) -> None:
    frame = features_frame(300, seed=1)
    svm = Pipeline([("prep", preprocessor()), ("m", LinearSVC())]).fit(frame[FEATURES], frame["x2"] > 0)
    cfg = _project(tmp_path, sqlite_url, svm)
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    assert published(sqlite_url)["score"].isna().all()

    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    spec = job(output="p2")
    spec["output"]["score"] = False
    cfg = write_config(tmp_path, sqlite_url, {"j": spec})
    assert cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat()).exit_code == 0
    out = published(sqlite_url, "p2")
    assert len(out) == 40 and out["score"].isna().all() and out["prediction"].notna().all()


def test_model_returning_the_wrong_shape_exits_2_and_writes_nothing(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(300, seed=1)
    two_targets = np.column_stack([frame["x2"], frame["x3"]])
    model = Pipeline([("prep", preprocessor()), ("m", LinearRegression())]).fit(frame[FEATURES], two_targets)
    cfg = _project(tmp_path, db_url, model)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 2, result.output
    assert "Error: job 'j'" in result.output
    # Refused when the model is loaded, before a row is read or a run recorded.
    assert "predicts several values per row" in result.output and "2 target columns" in result.output
    _nothing_written(db_url)
    assert tables(db_url) == {"features"} and runs(db_url) == []


def test_model_and_config_writable_by_others_draw_a_warning(tmp_path: Path, sqlite_url: str) -> None:
    cfg = _project(tmp_path, sqlite_url, train("binary"))
    model = tmp_path / "models" / "m.joblib"
    cfg.chmod(0o644)
    model.chmod(0o644)
    quiet = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())
    assert quiet.exit_code == 0 and "writable by group or others" not in quiet.output

    cfg.chmod(0o666)
    model.chmod(0o664)
    loud = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert loud.exit_code == 0, loud.output
    assert f"config file {cfg} is writable by group or others" in loud.output
    assert f"model file {model} is writable by group or others" in loud.output
    assert "chmod go-w" in loud.output


def test_loaded_model_knows_the_fitted_kind_of_each_feature(tmp_path: Path) -> None:
    from batch_scorer.models.loader import load_model

    path = save_model(train("binary"), tmp_path / "m.joblib")
    loaded: LoadedModel = load_model("j", path)
    assert dict(loaded.feature_kinds) == {"x1": "numeric", "x2": "numeric", "x3": "numeric", "color": "text"}
    assert isinstance(train("binary").steps[0][1], ColumnTransformer)
