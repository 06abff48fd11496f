"""Champion and challengers: every chunk is scored by both in the same run; challenger rows
go to <output>_shadow, published with the champion's and never shown by _latest; the
comparisons are what an independent computation gives; a challenger that fails is
recorded with its error and the champion is published all the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from tests.helpers import AS_OF, cli_run, features_frame, load_table, published, query, save_model, train
from tests.registry_support import (
    assert_same_output,
    latest_run,
    ok,
    own_output,
    registry_config,
    registry_job,
    run_rows,
    setup_source,
)


def _comparisons(url: str, run_id: int) -> dict[str, dict[str, Any]]:
    cols = ["challenger", "model_version", "rows", "label_agreement", "mean_abs_score_diff", "max_abs_score_diff",
            "error"]
    rows = query(url, f"SELECT {', '.join(cols)} FROM shadow_comparisons WHERE run_id = :r", r=run_id)  # noqa: S608
    return {r[0]: dict(zip(cols, r, strict=True)) for r in rows}


def _champion_and_challenger(tmp_path: Path, url: str) -> tuple[Path, Any, Any]:
    champion, challenger = train("binary"), train("forest")
    config = registry_config(tmp_path, url, {"j": registry_job(challengers=["challenger"])})
    ok(config, "models", "register", "churn", str(save_model(champion, tmp_path / "c.joblib")), "--alias", "champion")
    ok(config, "models", "register", "churn", str(save_model(challenger, tmp_path / "f.joblib")),
       "--alias", "challenger")
    return config, champion, challenger


def test_challenger_rows_are_the_challengers_own_output_row_by_row(tmp_path: Path, db_url: str) -> None:
    frame = setup_source(db_url)
    config, champion, challenger = _champion_and_challenger(tmp_path, db_url)
    ok(config, "run", "j", "--as-of", str(AS_OF))
    run_id = latest_run(db_url)["run_id"]

    assert_same_output(run_rows(db_url, run_id), own_output(champion, frame))
    shadow = run_rows(db_url, run_id, "predictions_shadow", extra=", challenger")
    assert_same_output(shadow, own_output(challenger, frame))
    assert set(shadow["challenger"]) == {"challenger"} and set(shadow["model_version"]) == {"v2"}


def test_shadow_comparisons_equal_an_independent_computation(tmp_path: Path, db_url: str) -> None:
    frame = setup_source(db_url)
    config, champion, challenger = _champion_and_challenger(tmp_path, db_url)
    ok(config, "run", "j", "--as-of", str(AS_OF))
    ours, theirs = own_output(champion, frame), own_output(challenger, frame)
    diff = np.abs(ours["score"] - theirs["score"])

    got = _comparisons(db_url, latest_run(db_url)["run_id"])["challenger"]

    assert (got["rows"], got["model_version"], got["error"]) == (len(ours), "v2", None)
    assert got["label_agreement"] == (ours["prediction"] == theirs["prediction"]).mean()
    np.testing.assert_allclose([got["mean_abs_score_diff"], got["max_abs_score_diff"]], [diff.mean(), diff.max()],
                               rtol=1e-9)


def test_the_latest_view_never_shows_shadow_rows(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config, _, _ = _champion_and_challenger(tmp_path, db_url)
    ok(config, "run", "j", "--as-of", str(AS_OF))
    ok(config, "run", "j", "--as-of", str(AS_OF))  # a re-run replaces both tables' rows

    latest = query(db_url, "SELECT model_version, run_id, count(*) FROM predictions_latest "
                           "GROUP BY model_version, run_id")
    run_id = latest_run(db_url)["run_id"]
    assert latest == [("v1", run_id, 300)]
    assert query(db_url, "SELECT run_id, challenger, count(*) FROM predictions_shadow GROUP BY run_id, challenger") == [
        (run_id, "challenger", 300)]
    columns = query(db_url, "SELECT * FROM predictions_latest LIMIT 1")
    assert len(columns[0]) == len(query(db_url, "SELECT * FROM predictions LIMIT 1")[0])


class Flaky(LogisticRegression):
    """A classifier that raises on any rows with an x2 below -2.5 (a real bug in a challenger)."""

    def predict(self, X: Any) -> Any:
        self._refuse(X)
        return super().predict(X)

    def predict_proba(self, X: Any) -> Any:
        self._refuse(X)
        return super().predict_proba(X)

    @staticmethod
    def _refuse(X: Any) -> None:
        if float(np.min(np.asarray(X)[:, 0])) < -2.5:
            raise RuntimeError("flaky challenger: boom")


class Misshapen(LogisticRegression):
    """A classifier that returns one prediction too many for rows with an x2 below -2.5."""

    def predict(self, X: Any) -> Any:
        out = super().predict(X)
        return np.append(out, out[:1]) if float(np.min(np.asarray(X)[:, 0])) < -2.5 else out


@pytest.mark.parametrize(("broken", "error"), [(Flaky, "flaky challenger: boom"),
                                               (Misshapen, "returned predictions of shape")])
def test_a_challenger_that_fails_leaves_the_champion_published_and_its_error_recorded(
    tmp_path: Path, db_url: str, broken: type, error: str
) -> None:
    frame = features_frame(300, seed=3)
    frame["x2"] = frame["x2"].clip(-2.0, 2.0)
    frame.loc[frame["entity_id"] == 250, "x2"] = -3.0  # in the third chunk of 100
    load_table(db_url, frame)
    flaky = broken().fit(frame[["x2", "x3"]], (frame["x2"] > 0).astype(int))
    _, champion, _ = _champion_and_challenger(tmp_path, db_url)
    jobs = {"j": {**registry_job(challengers=["challenger", 3]), "chunk_size": 100}}
    config = registry_config(tmp_path, db_url, jobs)
    ok(config, "models", "register", "churn", str(save_model(flaky, tmp_path / "flaky.joblib")))

    result = cli_run(config, "run", "j", "--as-of", str(AS_OF))

    assert result.exit_code == 0, result.output
    assert "challenger v3 failed and is not scored further" in result.output
    run_id = latest_run(db_url)["run_id"]
    assert_same_output(run_rows(db_url, run_id), own_output(champion, frame))
    got = _comparisons(db_url, run_id)
    assert error in got["v3"]["error"] and got["v3"]["rows"] == 0
    assert got["v3"]["label_agreement"] is None and got["challenger"]["error"] is None
    # The flaky one's first two chunks were staged; none of its rows are published.
    shadow = query(db_url, "SELECT challenger, count(*) FROM predictions_shadow WHERE run_id = :r GROUP BY challenger",
                   r=run_id)
    assert shadow == [("challenger", 300)]


def test_a_challenger_whose_feature_column_the_source_lacks_is_recorded_not_read(
    tmp_path: Path, db_url: str
) -> None:
    frame = setup_source(db_url)
    wide = features_frame(200, seed=2).assign(tenure=1.0)
    other = LogisticRegression().fit(wide[["x2", "tenure"]], (wide["x2"] > 0).astype(int))
    config = registry_config(tmp_path, db_url, {"j": registry_job(challengers=[2])})
    champion = train("binary")
    ok(config, "models", "register", "churn", str(save_model(champion, tmp_path / "c.joblib")), "--alias", "champion")
    ok(config, "models", "register", "churn", str(save_model(other, tmp_path / "o.joblib")))

    # validate says ok (the champion runs) and that the challenger will not be scored, and why.
    checked = ok(config, "validate", "j")
    assert "challenger v2 will not be scored" in checked and "'tenure'" in checked, checked
    ok(config, "run", "j", "--as-of", str(AS_OF))

    run_id = latest_run(db_url)["run_id"]
    assert_same_output(run_rows(db_url, run_id), own_output(champion, frame))
    got = _comparisons(db_url, run_id)["v2"]
    assert "'tenure'" in got["error"] and got["rows"] == 0 and got["model_version"] == "v2"


def test_a_regressor_named_as_a_classifiers_challenger_is_recorded_not_scored(tmp_path: Path, db_url: str) -> None:
    """Named by version (so no promote checked it): it is refused like promote refuses it."""
    frame = setup_source(db_url)
    config = registry_config(tmp_path, db_url, {"j": registry_job(challengers=[2])})
    champion = train("binary")
    ok(config, "models", "register", "churn", str(save_model(champion, tmp_path / "c.joblib")), "--alias", "champion")
    ok(config, "models", "register", "churn", str(save_model(train("regressor"), tmp_path / "r.joblib")))

    ok(config, "run", "j", "--as-of", str(AS_OF))

    run_id = latest_run(db_url)["run_id"]
    assert_same_output(run_rows(db_url, run_id), own_output(champion, frame))
    got = _comparisons(db_url, run_id)["v2"]
    assert "is a regressor, but the champion is a classifier" in got["error"] and got["rows"] == 0


def test_the_shadow_table_has_the_outputs_columns_plus_challenger(tmp_path: Path, sqlite_url: str) -> None:
    setup_source(sqlite_url)
    config, _, _ = _champion_and_challenger(tmp_path, sqlite_url)
    ok(config, "run", "j", "--as-of", str(AS_OF))
    main = pd.DataFrame(query(sqlite_url, "SELECT name FROM pragma_table_info('predictions')"))[0].tolist()
    shadow = pd.DataFrame(query(sqlite_url, "SELECT name FROM pragma_table_info('predictions_shadow')"))[0].tolist()
    assert shadow == [*main, "challenger"]


def test_a_challenger_just_promoted_to_champion_is_not_scored_against_itself(tmp_path: Path, sqlite_url: str) -> None:
    frame = setup_source(sqlite_url)
    config, _, challenger = _champion_and_challenger(tmp_path, sqlite_url)
    ok(config, "models", "promote", "churn", "2", "--alias", "champion")  # both aliases now name v2
    result = cli_run(config, "-v", "run", "j", "--as-of", str(AS_OF))
    assert result.exit_code == 0, result.output
    assert "is the champion's own version v2" in " ".join(result.output.split())
    run_id = latest_run(sqlite_url)["run_id"]
    assert_same_output(run_rows(sqlite_url, run_id), own_output(challenger, frame))
    assert _comparisons(sqlite_url, run_id) == {}
    assert published(sqlite_url, "predictions_shadow").empty  # no shadow rows (no shadow table even)
