"""Config loading: expansion, validation, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_scorer.config import config_from_dict, load_config
from batch_scorer.errors import ConfigError


def _job(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"model": {"path": "models/m.joblib"},
                               "source": {"table": "f", "key": ["id"]}}
    base.update(kw)
    return base


def test_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "database: {url: 'sqlite:///data/x.db'}\n"
        "jobs:\n  j:\n    model: {path: models/m.joblib}\n"
        "    source: {query: sql/q.sql, key: [id]}\n"
    )
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.job("j").model.path == tmp_path / "models" / "m.joblib"
    assert cfg.job("j").source.query == tmp_path / "sql" / "q.sql"
    assert cfg.database.url == f"sqlite:///{tmp_path}/data/x.db"


def test_unknown_top_level_key_has_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"unknown key defualts \(did you mean 'defaults'\?\)"):
        config_from_dict({"defualts": {}})


def test_table_and_source_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="exactly one of source.table or source.query"):
        config_from_dict({"jobs": {"j": _job(source={"table": "f", "query": "q.sql", "key": ["id"]})}})


def test_hostile_table_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not a plain identifier"):
        config_from_dict({"jobs": {"j": _job(output={"table": "predictions; drop table x; --"})}})


def test_jobs_sharing_an_output_table_must_share_keys() -> None:
    with pytest.raises(ConfigError, match="different keys"):
        config_from_dict({"jobs": {
            "a": _job(),
            "b": _job(source={"table": "f", "key": ["other_id"]}),
        }})


def test_reserved_output_column_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match="clashes with the output table"):
        config_from_dict({"jobs": {"j": _job(output={"pass_through": ["score"]})}})


def test_literal_password_draws_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text("database: {url: 'postgresql://u:hunter2@db/x'}\n")
    load_config(tmp_path / "config.yaml")
    assert "environment variable" in caplog.text
    assert "hunter2" not in caplog.text
