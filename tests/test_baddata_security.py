"""Hostile or careless configuration: injected names, passwords in the open,
personal data in logs. Real SQLite and PostgreSQL, the CLI as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression

from batch_scorer.storage.db import create_engine
from tests.baddata_support import nothing_to_hide, rejected, runs, strict_model, tables
from tests.helpers import (
    AS_OF,
    cli_run,
    features_frame,
    job,
    load_table,
    published,
    query,
    save_model,
    train,
    write_config,
)

PASSWORD = "Sentinel-Pw-8c1f2e"  # noqa: S105 - a marker to search for, not a credential
PII_CATEGORY = "PII-Alice-Smith"
PII_NUMBER = "PII-555-0142"


def _sentinel_table(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE x (keep INTEGER)"))
            conn.execute(sa.text("INSERT INTO x VALUES (42)"))
    finally:
        engine.dispose()


HOSTILE: dict[str, dict[str, Any]] = {
    "output.table": {"output": "predictions; drop table x; --"},
    "schema.table": {"output": "public.x; drop table x"},
    "source.table": {"table": "features; drop table x; --"},
    "source.key": {"key": ["entity_id; drop table x"]},
    "pass_through": {"pass_through": ['note"; drop table x; --']},
    "as_of_column": {"as_of_column": "snapshot_date) or 1=1 --"},
    "features": {"features": ["x1; drop table x", "x2", "x3"]},
}


@pytest.mark.parametrize("where", list(HOSTILE))
def test_hostile_names_in_config_exit_2_and_leave_the_database_untouched(
    tmp_path: Path, db_url: str, where: str
) -> None:
    load_table(db_url, features_frame(20))
    _sentinel_table(db_url)
    model: Any = train("binary")
    if where == "features":  # fitted on an array: the job's features: list names the columns
        frame = features_frame(100, seed=1)
        model = LogisticRegression().fit(frame[["x1", "x2", "x3"]].fillna(0).to_numpy(), frame["x3"] > 4)
    save_model(model, tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(**HOSTILE[where])})
    before = tables(db_url)

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 2, result.output
    assert "Error: " in result.output and "Traceback" not in result.output
    assert tables(db_url) == before == {"features", "x"}
    assert query(db_url, "SELECT keep FROM x") == [(42,)]


def test_reserved_words_as_names_are_quoted_not_interpreted(tmp_path: Path, db_url: str) -> None:
    frame = features_frame(30).rename(columns={"entity_id": "group", "note": "from"})
    load_table(db_url, frame, table="select", **{"from": sa.Text()})
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    cfg = write_config(
        tmp_path, db_url, {"j": job(table="select", key=["group"], output="order", pass_through=["from"])}
    )

    result = cli_run(cfg, "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == 0, result.output
    out = published(db_url, "order")
    assert sorted(out["group"]) == list(range(1, 31))
    assert list(out.sort_values("group")["from"]) == list(frame["from"])
    assert "order_latest" in tables(db_url)


def _with_password(url: str, **parts: Any) -> str:
    return sa.engine.make_url(url).set(password=PASSWORD, **parts).render_as_string(hide_password=False)


def _all_commands(cfg: Path, env: dict[str, str] | None = None) -> str:
    outputs = []
    for args in (["-vv", "run", "j", "--as-of", AS_OF.isoformat()], ["validate"], ["init-db"], ["runs"]):
        result = cli_run(cfg, *args, env=env)
        assert "Traceback" not in result.output, result.output
        outputs.append(result.output)
    return "\n".join(outputs)


def test_password_never_appears_on_any_failure_path(tmp_path: Path, pg_url: str) -> None:
    load_table(pg_url, features_frame(40))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "bad.sql").write_text("SELEC entity_id FROM features")
    # Fails only when rows are read (LIMIT 0 probes pass): a run recorded as failed.
    (tmp_path / "sql" / "div0.sql").write_text(
        "SELECT entity_id, x1, x2, x3 / (x3 - x3) AS x3, color FROM features"
    )
    failure_paths = {
        "unreachable host": (_with_password(pg_url, host="127.0.0.1", port=1), {}),
        "wrong database": (_with_password(pg_url, database="no_such_db_bs"), {}),
        "bad port in url": (
            _with_password(pg_url).replace("127.0.0.1:5432", "127.0.0.1:notaport"), {}
        ),
        "bad query": (_with_password(pg_url), {"query": "sql/bad.sql"}),
        "failed run in ledger": (_with_password(pg_url), {"query": "sql/div0.sql"}),
        "succeeding run": (_with_password(pg_url), {}),
    }
    for name, (url, source) in failure_paths.items():
        spec = job(query=source["query"]) if source else job()
        # Through an environment variable (the recommended way) and literally.
        cfg = write_config(tmp_path, "${BS_TEST_DB_URL}", {"j": spec})
        text = _all_commands(cfg, env={"BS_TEST_DB_URL": url})
        cfg = write_config(tmp_path, url, {"j": spec})
        text += _all_commands(cfg)
        nothing_to_hide(text, PASSWORD)
        assert name == "succeeding run" or "Error: " in text, (name, text)

    ledger = runs(pg_url)
    assert any(r["status"] == "failed" and "division by zero" in (r["error"] or "") for r in ledger)
    nothing_to_hide(repr(ledger), PASSWORD)


def test_password_is_not_printed_by_a_real_process_either(tmp_path: Path, pg_url: str) -> None:
    cfg = write_config(tmp_path, _with_password(pg_url, database="no_such_db_bs"), {"j": job()})
    proc = subprocess.run(
        [sys.executable, "-m", "batch_scorer.cli", "--config", str(cfg), "-vv", "run", "j"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "no_such_db_bs" in proc.stderr
    nothing_to_hide(proc.stdout + proc.stderr, PASSWORD)


def test_literal_password_in_config_draws_a_warning_to_use_an_env_var(tmp_path: Path, pg_url: str) -> None:
    load_table(pg_url, features_frame(20))
    save_model(train("binary"), tmp_path / "models" / "m.joblib")
    literal = write_config(tmp_path, _with_password(pg_url), {"j": job()})
    warned = cli_run(literal, "validate")
    assert warned.exit_code == 0, warned.output
    assert "literal database password" in warned.output and "environment variable" in warned.output
    nothing_to_hide(warned.output, PASSWORD)

    from_env = write_config(tmp_path, "${BS_TEST_DB_URL}", {"j": job()})
    quiet = cli_run(from_env, "validate", env={"BS_TEST_DB_URL": _with_password(pg_url)})
    assert quiet.exit_code == 0, quiet.output
    assert "literal database password" not in quiet.output


def _pii_source(url: str, n: int, bad: int) -> pd.DataFrame:
    frame = features_frame(n, seed=3)
    frame["x1"] = [None if pd.isna(v) else repr(float(v)) for v in frame["x1"]]
    step = n // bad  # spread out: a few per chunk
    frame.loc[frame.index[0::step][:bad], "color"] = PII_CATEGORY
    frame.loc[frame.index[1::step][:bad], "x1"] = PII_NUMBER
    load_table(url, frame, x1=sa.Text())
    return frame


@pytest.mark.parametrize("bad", [2, 20], ids=["few-bad-rows", "run-fails"])
def test_feature_values_never_appear_in_logs_errors_or_rejections(
    tmp_path: Path, db_url: str, bad: int
) -> None:
    _pii_source(db_url, 400, bad)
    save_model(strict_model(), tmp_path / "models" / "m.joblib")
    cfg = write_config(tmp_path, db_url, {"j": job(chunk_size=64)})

    result = cli_run(cfg, "-vv", "run", "j", "--as-of", AS_OF.isoformat())

    assert result.exit_code == (0 if bad == 2 else 1), result.output
    reasons = rejected(db_url)
    assert len(reasons) == 2 * bad
    assert {r for _, r in reasons} == {
        "column 'color': the model rejected the value (ValueError)",
        "column 'x1': not a number",
    }
    ledger = runs(db_url)
    for text in (result.output, repr(reasons), repr(ledger), _all_commands(cfg)):
        nothing_to_hide(text, PII_CATEGORY, PII_NUMBER)


def test_malformed_database_url_exits_2_without_echoing_the_password(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"postgresql://scorer:{PASSWORD}@127.0.0.1:notaport/db", {})
    for command in ("run", "validate", "init-db", "runs"):
        result = cli_run(cfg, *([command, "--all"] if command == "run" else [command]))
        assert result.exit_code == 2, result.output
        assert "database.url is not a valid SQLAlchemy URL" in result.output
        nothing_to_hide(result.output, PASSWORD)
