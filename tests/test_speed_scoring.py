"""Scoring a chunk in parts on the scoring threads gives exactly the model's own output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from batch_scorer.config import config_from_dict
from batch_scorer.executors import threads
from batch_scorer.executors.threads import PARALLEL_MIN_ROWS
from batch_scorer.models.loader import load_model
from batch_scorer.models.scoring import prepare_features
from tests.helpers import FEATURES, NUMERIC, features_frame, save_model, train


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regressor", "forest", "bare"])
def test_a_chunk_scored_in_parts_equals_the_models_own_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "bare":  # not a Pipeline, fitted on numeric columns only
        frame = features_frame(400, seed=1).dropna(subset=NUMERIC)
        estimator = LogisticRegression().fit(frame[NUMERIC], (frame["x1"] > 0).astype(int))
        columns = NUMERIC
    else:
        estimator = train(kind)
        columns = FEATURES
    model = load_model("j", save_model(estimator, tmp_path / "m.joblib"))
    rows = features_frame(3 * PARALLEL_MIN_ROWS + 7, seed=9)
    if kind == "bare":
        rows = rows.dropna(subset=NUMERIC)
    X = prepare_features(model, rows)

    whole = threads.score_in_parts(model, X, threads.ThreadSettings(scoring_threads=1))
    parts = threads.score_in_parts(model, X, threads.ThreadSettings(scoring_threads=2))

    expected = estimator.predict(rows[columns])
    np.testing.assert_array_equal(whole[0], expected)
    np.testing.assert_array_equal(parts[0], expected)
    if whole[1] is None:
        assert parts[1] is None
    else:
        proba = estimator.predict_proba(rows[columns])
        picked = proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)
        np.testing.assert_array_equal(whole[1], picked)
        np.testing.assert_array_equal(parts[1], picked)


def test_scoring_threads_default_to_two_on_two_cores_and_can_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCH_SCORER_SCORING_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert config_from_dict({}).runtime.resolved_scoring_threads() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert config_from_dict({}).runtime.resolved_scoring_threads() == 1
    monkeypatch.setenv("BATCH_SCORER_SCORING_THREADS", "3")
    assert config_from_dict({}).runtime.resolved_scoring_threads() == 3
    assert config_from_dict({"runtime": {"scoring_threads": 4}}).runtime.resolved_scoring_threads() == 3
    monkeypatch.delenv("BATCH_SCORER_SCORING_THREADS")
    assert config_from_dict({"runtime": {"scoring_threads": 4}}).runtime.resolved_scoring_threads() == 4
