"""What the registry refuses to load: bytes changed in model_versions after registration
(checked by sha256 before anything is unpickled), and skops files holding types nobody
trusted."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from batch_scorer.storage.db import create_engine
from tests.helpers import AS_OF, cli_run, query, save_model, train
from tests.registry_support import (
    latest_run,
    ok,
    registry_config,
    registry_job,
    run_rows,
    setup_source,
)


class _WritesMarker:
    """A pickle that, when loaded, creates a file (what a malicious artifact would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _versions(url: str) -> int:
    """How many versions are registered (none while the registry tables do not exist)."""
    engine = create_engine(url)
    try:
        if not sa.inspect(engine).has_table("model_versions"):
            return 0
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM model_versions")).scalar_one())
    finally:
        engine.dispose()


def _replace_artifact(url: str, data: bytes) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE model_versions SET artifact = :a WHERE name = 'churn' AND version = 1"),
                         {"a": data})
    finally:
        engine.dispose()


def test_tampered_artifact_bytes_are_refused_before_they_are_unpickled(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config = registry_config(tmp_path, db_url)
    ok(config, "models", "register", "churn", str(save_model(train("binary"), tmp_path / "m.joblib")),
       "--alias", "champion")
    # The payload is real: loading it does create its marker.
    pickle.loads(pickle.dumps(_WritesMarker(tmp_path / "proof")))  # noqa: S301 - the point of the test
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "marker"
    _replace_artifact(db_url, pickle.dumps(_WritesMarker(marker)))
    result = cli_run(config, "run", "j", "--as-of", str(AS_OF))

    assert result.exit_code == 2, result.output
    assert "sha256" in result.output and "changed in model_versions" in result.output
    assert not marker.exists()
    assert query(db_url, "SELECT count(*) FROM scoring_runs WHERE status = 'succeeded'") == [(0,)]
    export = cli_run(config, "models", "export", "churn", "1", str(tmp_path / "out.joblib"))
    assert export.exit_code == 2 and not marker.exists() and not (tmp_path / "out.joblib").exists()


def double(X: Any) -> Any:
    """A transform of this test module: a type skops does not trust by default."""
    return X * 2


def test_a_skops_model_is_registered_and_scored(tmp_path: Path, db_url: str) -> None:
    frame = setup_source(db_url)
    model = Pipeline([("sc", StandardScaler()), ("m", LogisticRegression())]).fit(
        frame[["x2", "x3"]], (frame["x2"] > 0).astype(int))
    path = tmp_path / "m.skops"
    sio.dump(model, path)
    assert sio.get_untrusted_types(file=path) == []
    config = registry_config(tmp_path, db_url)
    ok(config, "models", "register", "churn", str(path), "--alias", "champion")
    assert query(db_url, "SELECT format FROM model_versions") == [("skops",)]
    ok(config, "run", "j", "--as-of", str(AS_OF))
    scored = run_rows(db_url, latest_run(db_url)["run_id"])
    source = frame.sort_values("entity_id")
    np.testing.assert_array_equal(scored["prediction"].astype(int), model.predict(source[["x2", "x3"]]))
    np.testing.assert_allclose(scored["score"], model.predict_proba(source[["x2", "x3"]])[:, 1], rtol=1e-12)


def test_a_skops_type_nobody_trusts_is_refused_naming_it(tmp_path: Path, db_url: str) -> None:
    frame = setup_source(db_url)
    rows = frame.dropna(subset=["x1"])
    model = Pipeline([("double", FunctionTransformer(double)), ("m", LogisticRegression())]).fit(
        rows[["x2", "x3"]], (rows["x2"] > 0).astype(int))
    path = tmp_path / "own.skops"
    sio.dump(model, path)
    type_name = f"{__name__}.double"
    config = registry_config(tmp_path, db_url)

    refused = cli_run(config, "models", "register", "churn", str(path))
    assert refused.exit_code == 2 and type_name in refused.output and "not loaded" in refused.output
    assert _versions(db_url) == 0

    # Registered by someone who trusts it; it cannot become the champion of a job that
    # does not, because that job's runs would refuse to load it.
    ok(config, "models", "register", "churn", str(path), "--trust", type_name)
    promote = cli_run(config, "models", "promote", "churn", "1")
    assert promote.exit_code == 2 and type_name in promote.output and "job 'j'" in promote.output

    (tmp_path / "trusting").mkdir()
    trusting = registry_config(tmp_path / "trusting", db_url, {"j": registry_job(trusted_types=[type_name])})
    ok(trusting, "models", "promote", "churn", "1")
    run = cli_run(config, "run", "j", "--as-of", str(AS_OF))  # the job that does not trust it
    assert run.exit_code == 2 and type_name in run.output
    ok(trusting, "run", "j", "--as-of", str(AS_OF))
    scored = run_rows(db_url, latest_run(db_url)["run_id"])
    source = frame.sort_values("entity_id")
    np.testing.assert_array_equal(scored["prediction"].astype(int), model.predict(source[["x2", "x3"]]))
