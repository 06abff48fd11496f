"""Shared set-up for the fleet tests: a feature table over several countries and one small
real model per country (and a job config that is a matrix over them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.helpers import AS_OF, features_frame, load_table, save_model, train, write_config

COUNTRIES = ["AT", "BE", "CH"]


def country_frame(n_per_country: int = 120, countries: list[str] = COUNTRIES, seed: int = 5) -> pd.DataFrame:
    """``features_frame`` rows for each country, entity ids unique across countries."""
    frames = []
    for i, country in enumerate(countries):
        frame = features_frame(n_per_country, seed=seed + i)
        frame["entity_id"] = frame["entity_id"] + i * 100_000
        frame["country"] = country
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def per_country_models(tmp_path: Path, countries: list[str] = COUNTRIES, kind: str = "binary") -> dict[str, Any]:
    """One model per country, trained on different data so their outputs differ."""
    models = {}
    for i, country in enumerate(countries):
        model = train(kind, features_frame(300, seed=40 + i))
        save_model(model, tmp_path / "models" / f"m_{country}.joblib")
        models[country] = model
    return models


def matrix_job(countries: list[str] = COUNTRIES, **extra: Any) -> dict[str, Any]:
    """A job per country: model m_{country}, rows where country = {country}."""
    job: dict[str, Any] = {
        "matrix": {"country": list(countries)},
        "model": {"path": "models/m_{country}.joblib"},
        "source": {"table": "features", "key": ["entity_id"], "as_of_column": "snapshot_date",
                   "where": {"country": "{country}"}},
        "output": {"table": "predictions", "pass_through": ["country"]},
    }
    job.update(extra)
    return job


def fleet(tmp_path: Path, url: str, n_per_country: int = 120, kind: str = "binary",
          countries: list[str] = COUNTRIES, **top: Any) -> tuple[Path, pd.DataFrame, dict[str, Any]]:
    """Feature table, models and a config with one matrix job ``m`` over ``countries``."""
    frame = country_frame(n_per_country, countries)
    load_table(url, frame)
    models = per_country_models(tmp_path, countries, kind)
    cfg = write_config(tmp_path, url, {"m": matrix_job(countries)}, **top)
    return cfg, frame, models


def expected(model: Any, rows: pd.DataFrame) -> pd.DataFrame:
    """What a job must publish for ``rows``: the model's own predict and positive-class score."""
    from tests.helpers import FEATURES

    out = pd.DataFrame({"entity_id": rows["entity_id"].to_numpy(), "prediction": model.predict(rows[FEATURES])})
    if hasattr(model, "predict_proba"):
        out["score"] = model.predict_proba(rows[FEATURES])[:, 1]
    return out.sort_values("entity_id").reset_index(drop=True)


def as_of_arg() -> tuple[str, str]:
    return ("--as-of", AS_OF.isoformat())


__all__ = ["COUNTRIES", "as_of_arg", "country_frame", "expected", "fleet", "matrix_job", "np", "per_country_models"]
