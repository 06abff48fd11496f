"""Models saved with skops (a format that does not run code when loaded): they
score exactly like their joblib twins, a type skops does not trust is refused
unless the job trusts it, and the sha256 pin is checked before loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
import skops.io as sio
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from batch_scorer.errors import ModelError
from batch_scorer.models.loader import file_sha256, load_model
from batch_scorer.models.scoring import prepare_features, score_prepared
from tests.helpers import features_frame, save_model

COLUMNS = ["x2", "x3", "color"]
OLD_SKLEARN = "0.24.2"


def _data(n: int = 300, seed: int = 1) -> tuple[Any, np.ndarray]:
    frame = features_frame(n, seed=seed).dropna(subset=["color"])
    return frame, (frame["x2"] + (frame["color"] == "red") > 0.3).to_numpy()


def _plain_pipeline() -> Pipeline:
    frame, y = _data()
    prep = ColumnTransformer([("oh", OneHotEncoder(handle_unknown="ignore"), ["color"])], remainder="passthrough")
    return Pipeline([("prep", prep), ("m", LogisticRegression())]).fit(frame[COLUMNS], y)


def double(X: Any) -> Any:
    """A transform function of this test module: a type skops does not trust by default."""
    return X * 2


def _pipeline_with_own_function() -> Pipeline:
    frame, y = _data()
    steps = [("double", FunctionTransformer(double)), ("m", LogisticRegression())]
    return Pipeline(steps).fit(frame[["x2", "x3"]], y)


def _skops(model: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.dump(model, path)
    return path


def test_a_skops_pipeline_scores_exactly_like_its_joblib_twin(tmp_path: Path) -> None:
    estimator = _plain_pipeline()
    as_skops = load_model("j", _skops(estimator, tmp_path / "m.skops"))
    as_joblib = load_model("j", save_model(estimator, tmp_path / "m.joblib"))
    rows = features_frame(2000, seed=7).dropna(subset=["color"])

    skops_out = score_prepared(as_skops, prepare_features(as_skops, rows))
    joblib_out = score_prepared(as_joblib, prepare_features(as_joblib, rows))

    assert (as_skops.fmt, as_joblib.fmt) == ("skops", "joblib")
    assert as_skops.features == as_joblib.features == tuple(COLUMNS)
    np.testing.assert_array_equal(skops_out[0], joblib_out[0])
    np.testing.assert_array_equal(skops_out[1], joblib_out[1])
    np.testing.assert_array_equal(skops_out[0], estimator.predict(rows[COLUMNS]))


def test_a_skops_file_with_an_untrusted_type_is_refused_naming_it_until_the_job_trusts_it(tmp_path: Path) -> None:
    estimator = _pipeline_with_own_function()
    path = _skops(estimator, tmp_path / "m.skops")
    name = f"{__name__}.double"
    assert sio.get_untrusted_types(file=path) == [name]

    with pytest.raises(ModelError) as caught:
        load_model("j", path)

    message = str(caught.value)
    assert message.startswith("job 'j': ") and name in message and "model.trusted_types" in message
    assert "was not loaded" in message

    trusted = load_model("j", path, trusted_types=[name])
    rows = features_frame(50, seed=4)
    prediction, score = score_prepared(trusted, prepare_features(trusted, rows))
    np.testing.assert_array_equal(prediction, estimator.predict(rows[["x2", "x3"]]))
    np.testing.assert_array_equal(score, estimator.predict_proba(rows[["x2", "x3"]])[:, 1])


def test_a_tampered_skops_file_with_a_pin_is_refused_before_loading(tmp_path: Path) -> None:
    path = _skops(_plain_pipeline(), tmp_path / "m.skops")
    pinned = file_sha256(path)
    assert load_model("j", path, pinned_sha256=pinned).sha256 == pinned
    # The replacement holds an untrusted type: refusing it for the pin, not for the
    # type, shows the pin was checked before skops read the archive.
    _skops(_pipeline_with_own_function(), path)

    with pytest.raises(ModelError) as caught:
        load_model("j", path, pinned_sha256=pinned)

    message = str(caught.value)
    assert f"config pins {pinned}" in message and "was not loaded" in message
    assert "skops does not trust" not in message


def test_the_format_follows_the_suffix_or_an_explicit_fmt(tmp_path: Path) -> None:
    estimator = _plain_pipeline()
    odd_name = _skops(estimator, tmp_path / "m.model")
    pickled = save_model(estimator, tmp_path / "p.skops")

    assert load_model("j", odd_name, fmt="skops").fmt == "skops"
    with pytest.raises(ModelError, match="is a zip archive, not a pickle: a skops file"):
        load_model("j", odd_name)
    with pytest.raises(ModelError, match="it is not a skops file"):
        load_model("j", pickled)
    assert load_model("j", pickled, fmt="joblib").fmt == "joblib"


def test_a_truncated_skops_file_says_so(tmp_path: Path) -> None:
    path = _skops(_plain_pipeline(), tmp_path / "m.skops")
    path.write_bytes(path.read_bytes()[:-200])

    with pytest.raises(ModelError, match="it is truncated or corrupt"):
        load_model("j", path)


def test_a_skops_file_saved_with_another_sklearn_version_is_refused_unless_allowed(tmp_path: Path) -> None:
    estimator = _plain_pipeline()
    state = estimator.__getstate__()
    state["_sklearn_version"] = OLD_SKLEARN
    estimator.__getstate__ = lambda: state  # type: ignore[method-assign]
    path = _skops(estimator, tmp_path / "m.skops")

    with pytest.raises(ModelError) as caught:
        load_model("j", path)

    assert f"saved with scikit-learn {OLD_SKLEARN}" in str(caught.value)
    assert f"scikit-learn {sklearn.__version__} is installed" in str(caught.value)
    assert load_model("j", path, allow_version_mismatch=True).pickled_sklearn_version == OLD_SKLEARN
