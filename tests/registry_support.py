"""Helpers for the registry and shadow tests: a config whose job scores a registered model,
the run's rows, and a model's own predictions on the source rows to compare them with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.helpers import AS_OF, FEATURES, cli_run, features_frame, job, load_table, query, write_config

NAME = "churn"


def registry_job(name: str = NAME, **model: Any) -> dict[str, Any]:
    """A job scoring registered model ``name`` (alias champion unless ``model`` says otherwise)."""
    challengers = model.pop("challengers", None)
    spec = job()
    spec["model"] = {"registry": name, **model}
    if challengers is not None:
        spec["challengers"] = challengers
    return spec


def setup_source(url: str, n: int = 300) -> pd.DataFrame:
    """The source table ``features`` with ``n`` rows for AS_OF; returns them."""
    frame = features_frame(n, seed=3)
    load_table(url, frame)
    return frame


def registry_config(tmp_path: Path, url: str, jobs: dict[str, dict[str, Any]] | None = None, **top: Any) -> Path:
    """config.yaml with one job ``j`` on registered model ``churn`` (or ``jobs``)."""
    return write_config(tmp_path, url, jobs or {"j": registry_job()}, **top)


def ok(config: Path, *args: str) -> str:
    """Run a CLI command that must succeed; its output."""
    result = cli_run(config, *args)
    assert result.exit_code == 0, result.output
    return result.output


def latest_run(url: str, job_name: str = "j") -> dict[str, Any]:
    """The job's newest ledger row."""
    cols = "run_id, status, model_version, model_name, model_registry_version, model_sha256, error"
    rows = query(url, f"SELECT {cols} FROM scoring_runs WHERE job = :j ORDER BY run_id DESC", j=job_name)  # noqa: S608
    return dict(zip([c.strip() for c in cols.split(",")], rows[0], strict=True))


def run_rows(url: str, run_id: int, table: str = "predictions", extra: str = "") -> pd.DataFrame:
    """A run's rows of an output table, by entity_id."""
    rows = query(url, f'SELECT entity_id, prediction, score, model_version{extra} FROM "{table}" '  # noqa: S608
                      "WHERE run_id = :r ORDER BY entity_id", r=run_id)
    columns = ["entity_id", "prediction", "score", "model_version"] + [c.strip() for c in extra.split(",") if c.strip()]
    return pd.DataFrame(rows, columns=columns)


def own_output(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """What ``model`` itself says for the source rows: predict(), and the positive class's probability."""
    rows = frame[frame["snapshot_date"] == AS_OF].sort_values("entity_id")
    X = rows[FEATURES]
    out = pd.DataFrame({"entity_id": rows["entity_id"].to_numpy(), "prediction": model.predict(X)})
    out["score"] = model.predict_proba(X)[:, 1] if hasattr(model, "predict_proba") else np.nan
    return out


def assert_same_output(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Row by row: the same entities, the same predictions, the same scores."""
    assert actual["entity_id"].tolist() == expected["entity_id"].tolist()
    assert actual["prediction"].astype(float).tolist() == expected["prediction"].astype(float).tolist()
    np.testing.assert_allclose(actual["score"].astype(float), expected["score"].astype(float), rtol=1e-12,
                               equal_nan=True)
