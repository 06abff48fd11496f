"""The registry's life cycle: register, promote, run, register again, promote, run, roll
back, run; each run scores exactly the version its ledger row names, and the history
shows every alias change."""

from __future__ import annotations

from pathlib import Path

import joblib

from tests.helpers import AS_OF, query, save_model, train
from tests.registry_support import (
    assert_same_output,
    latest_run,
    ok,
    own_output,
    registry_config,
    run_rows,
    setup_source,
)


def _run_and_check(config: Path, url: str, model: object, frame: object, version: int) -> None:
    ok(config, "run", "j", "--as-of", str(AS_OF))
    run = latest_run(url)
    assert (run["status"], run["model_name"], run["model_registry_version"], run["model_version"]) == (
        "succeeded", "churn", version, f"v{version}")
    rows = run_rows(url, run["run_id"])
    assert set(rows["model_version"]) == {f"v{version}"}
    assert_same_output(rows, own_output(model, frame))


def test_each_run_scores_the_version_its_ledger_row_names(tmp_path: Path, db_url: str) -> None:
    frame = setup_source(db_url)
    first, second = train("binary"), train("forest")
    config = registry_config(tmp_path, db_url)
    assert "churn v1: registered" in ok(config, "models", "register", "churn",
                                        str(save_model(first, tmp_path / "m1.joblib")), "--note", "first")
    ok(config, "models", "promote", "churn", "1")
    _run_and_check(config, db_url, first, frame, 1)

    assert "churn v2: registered" in ok(config, "models", "register", "churn",
                                        str(save_model(second, tmp_path / "m2.joblib")))
    ok(config, "models", "promote", "churn", "2", "--note", "forest is better")
    _run_and_check(config, db_url, second, frame, 2)

    assert "v2 -> v1 (rolled back)" in ok(config, "models", "rollback", "churn", "--note", "forest drifts")
    _run_and_check(config, db_url, first, frame, 1)

    events = query(db_url, "SELECT action, from_version, to_version, alias, note FROM model_alias_events "
                           "WHERE name = 'churn' ORDER BY id")
    assert events == [("promote", None, 1, "champion", None), ("promote", 1, 2, "champion", "forest is better"),
                      ("rollback", 2, 1, "champion", "forest drifts")]
    shown = ok(config, "models", "history", "churn").splitlines()
    assert len(shown) == 4 and [line.split()[4] for line in shown[1:]] == ["promote", "promote", "rollback"]
    assert all("@" in line for line in shown[1:])  # who: user@host


def test_list_and_export_give_back_the_registered_model(tmp_path: Path, db_url: str) -> None:
    frame = setup_source(db_url)
    model = train("binary")
    config = registry_config(tmp_path, db_url)
    ok(config, "models", "register", "churn", str(save_model(model, tmp_path / "m.joblib")), "--alias", "champion")
    ok(config, "models", "register", "churn", str(save_model(train("forest"), tmp_path / "f.joblib")))
    listed = ok(config, "models", "list", "churn").splitlines()
    assert [line.split()[:3] for line in listed[1:]] == [["churn", "v1", "champion"], ["churn", "v2", "classifier"]]
    assert "churn" in ok(config, "models", "list")

    out = ok(config, "models", "export", "churn", "1", str(tmp_path / "exported.joblib"))
    assert "wrote" in out
    exported = joblib.load(tmp_path / "exported.joblib")
    assert_same_output(own_output(exported, frame), own_output(model, frame))
    assert (tmp_path / "exported.joblib").read_bytes() == (tmp_path / "m.joblib").read_bytes()


def test_registering_the_same_bytes_twice_returns_the_existing_version(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config = registry_config(tmp_path, db_url)
    path = str(save_model(train("binary"), tmp_path / "m.joblib"))
    ok(config, "models", "register", "churn", path)
    assert "churn v1: already registered" in ok(config, "models", "register", "churn", path)
    assert query(db_url, "SELECT name, version FROM model_versions") == [("churn", 1)]
