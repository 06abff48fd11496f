"""The profile observer as the chunk loop calls it: its state does not grow with rows,
and partials computed apart (as Dask workers would, pickled back) merge into what
one pass over all the rows gives."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from batch_scorer.core.chunk import ChunkWork, process_chunk
from batch_scorer.core.profiling import ProfileObserver, merge_partials
from batch_scorer.models.loader import load_model
from batch_scorer.monitoring.profile import PREDICTION, SCORE, Profile, ReferenceSketch, bins_from_reference
from batch_scorer.runtime.monitor import profiled_outputs
from tests.helpers import FEATURES, features_frame, save_model, train

KINDS = {"x1": "numeric", "x2": "numeric", "x3": "numeric", "color": "categorical", SCORE: "numeric",
         PREDICTION: "categorical"}


def _work(tmp_path: Path, observer: ProfileObserver) -> ChunkWork:
    model = load_model("j", save_model(train("binary"), tmp_path / "m.joblib"))
    return ChunkWork(job="j", keys=("entity_id",), champion=model, main_columns=("entity_id",),
                     observers=(observer,))


def _state_bytes(profile: Profile) -> int:
    return sum(a.nbytes for a in profile.arrays())


def test_observer_state_does_not_grow_with_rows(tmp_path: Path) -> None:
    reference = features_frame(1_000, seed=1)
    model = train("binary")
    scored = reference[FEATURES].assign(**{SCORE: model.predict_proba(reference[FEATURES])[:, 1],
                                           PREDICTION: model.predict(reference[FEATURES])})
    observer = ProfileObserver(KINDS, bins_from_reference(scored, KINDS), score_name=SCORE, prediction_name=PREDICTION)
    work = _work(tmp_path, observer)
    small = process_chunk(work, features_frame(1_000, seed=2)).observed["profile"]
    big_chunk = features_frame(20_000, seed=3)
    state = None
    for _ in range(10):
        state = merge_partials(state, process_chunk(work, big_chunk).observed["profile"])
    assert isinstance(state, Profile) and state.rows("x1") == 200_000 and small.rows("x1") == 1_000
    assert _state_bytes(state) == _state_bytes(small)
    assert state.rows(SCORE) == 200_000 and state.counts(PREDICTION)[:2].sum() == 200_000


def test_a_sketch_state_stays_bounded_however_many_chunks_merge(tmp_path: Path) -> None:
    observer = ProfileObserver(KINDS, None, score_name=SCORE, prediction_name=PREDICTION)
    work = _work(tmp_path, observer)
    state = None
    for seed in range(5):
        state = merge_partials(state, process_chunk(work, features_frame(10_000, seed=seed)).observed["profile"])
    assert isinstance(state, ReferenceSketch) and state.rows == 50_000
    assert all(s.buffered <= 2 * state.sample_size and s.values.size == state.sample_size
               for s in state.numeric.values())
    assert all(len(h.summary) <= state.counters for h in state.categorical.values())
    profile = state.profile()
    assert profile.rows("x1") == 50_000  # NULLs and row counts are exact, the rest scaled from the sample
    assert profile.counts("x1")[-1] == state.nulls["x1"]


def test_partials_computed_apart_and_pickled_merge_into_the_one_pass_result(tmp_path: Path) -> None:
    frame = features_frame(3_000, seed=5)
    observer = ProfileObserver(KINDS, None, score_name=SCORE, prediction_name=PREDICTION)
    work = pickle.loads(pickle.dumps(_work(tmp_path, observer)))  # what a Dask task carries
    parts = [pickle.loads(pickle.dumps(process_chunk(work, frame.iloc[i : i + 700]).observed["profile"]))
             for i in range(0, len(frame), 700)]
    sketch = None
    for part in parts:
        sketch = merge_partials(sketch, part)
    whole = process_chunk(work, frame).observed["profile"]
    assert sketch.bins() == whole.bins()  # under the sample size: exact, however it was chunked
    for feature in KINDS:
        assert sketch.profile().counts(feature).tolist() == whole.profile().counts(feature).tolist()

    counted = ProfileObserver(KINDS, whole.bins(), score_name=SCORE, prediction_name=PREDICTION)
    work = _work(tmp_path, counted)
    total = None
    for i in range(0, len(frame), 700):
        total = merge_partials(total, pickle.loads(pickle.dumps(
            process_chunk(work, frame.iloc[i : i + 700]).observed["profile"])))
    for feature in KINDS:
        assert total.counts(feature).tolist() == whole.profile().counts(feature).tolist()


def test_a_regressor_profiles_its_prediction_as_the_score(tmp_path: Path) -> None:
    model = load_model("j", save_model(train("regressor"), tmp_path / "r.joblib"))
    outputs = profiled_outputs(model, "float", want_score=True)
    assert (outputs.score_name, outputs.score_from_prediction, outputs.prediction_name) == (SCORE, True, None)
    kinds = {f: KINDS[f] for f in FEATURES} | {SCORE: "numeric"}
    observer = ProfileObserver(kinds, None, score_name=SCORE, score_from_prediction=True)
    work = ChunkWork(job="j", keys=("entity_id",), champion=model, main_columns=("entity_id",),
                     want_score=False, observers=(observer,))
    frame = features_frame(400, seed=2)
    sketch = process_chunk(work, frame).observed["profile"]
    expected = np.quantile(model.estimator.predict(frame[FEATURES]), np.arange(1, 10) / 10)
    np.testing.assert_allclose(sketch.bins()[SCORE].edges, expected, rtol=1e-12)


def test_a_feature_named_score_keeps_its_name_and_the_model_score_moves_aside(tmp_path: Path) -> None:
    frame = features_frame(300, seed=1).rename(columns={"x2": "score"})
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression().fit(frame[["x3", "score"]], frame["x3"] > 4)
    model = load_model("j", save_model(fitted, tmp_path / "s.joblib"))
    outputs = profiled_outputs(model, "boolean", want_score=True)
    assert outputs.score_name == "model_score" and outputs.prediction_name == PREDICTION
    assert pd.Index(model.features).tolist() == ["x3", "score"]


def test_jobs_of_one_read_count_a_text_column_once_and_each_keeps_its_own_bins(tmp_path: Path) -> None:
    """Read once, score many: the jobs of a shared chunk take a text column's category
    counts from one count of it, each into its own reference's bins; a job that dropped
    rows (a NULL in its key) counts its own rows. Each profile is what the job alone gets."""
    from batch_scorer.core.chunk import shared_chunk

    model = train("binary")

    def observer(seed: int, colors: list[str]) -> ProfileObserver:
        reference = features_frame(1_000, seed=seed)
        reference = reference[reference["color"].isin(colors)]
        scored = reference[FEATURES].assign(**{SCORE: model.predict_proba(reference[FEATURES])[:, 1],
                                               PREDICTION: model.predict(reference[FEATURES])})
        return ProfileObserver(KINDS, bins_from_reference(scored, KINDS), score_name=SCORE,
                               prediction_name=PREDICTION)

    loaded = load_model("j", save_model(model, tmp_path / "m.joblib"))
    works = [ChunkWork(job=f"j{i}", keys=keys, champion=loaded, main_columns=("entity_id",), observers=(obs,))
             for i, (keys, obs) in enumerate([(("entity_id",), observer(1, ["red", "green"])),
                                              (("entity_id",), observer(2, ["red", "green", "blue"])),
                                              (("entity_id", "batch"), observer(3, ["blue", "red"]))])]
    chunk = features_frame(3_000, seed=4)
    chunk["color"] = chunk["color"].astype("str")  # a text column as the readers give it
    chunk["batch"] = np.where(np.arange(len(chunk)) % 7 == 0, np.nan, 1.0)  # job j2 drops these rows
    shared = shared_chunk(chunk, works)
    for work in works:
        together = process_chunk(work, shared).observed["profile"]
        alone = process_chunk(work, chunk).observed["profile"]
        for name in KINDS:
            assert together.counts(name).tolist() == alone.counts(name).tolist(), (work.job, name)
    assert set(shared._counts) == {"color"}  # counted once, for j0 and j1
    kept = process_chunk(works[2], shared).observed["profile"]
    assert kept.rows("color") == len(chunk) - len(chunk[::7])
