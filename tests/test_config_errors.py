"""Config mistakes that used to slip through or surface as odd messages: each is now a
clear ConfigError/UsageError at load, and an unset ${DATABASE_URL} only matters to a
command that connects. No database needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from batch_scorer.config import config_from_dict, load_config
from batch_scorer.errors import ConfigError, UsageError
from tests.helpers import cli_run

JOB = "    model: {path: m.joblib}\n    source: {table: f, key: [id]}\n"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_job_written_twice_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "jobs:\n  churn:\n" + JOB + "  other:\n" + JOB + "  churn:\n" + JOB)
    with pytest.raises(ConfigError, match=r"writes the key 'churn' twice .*\(lines 2 and 8\)"):
        load_config(path)


def test_nested_duplicate_key_is_refused_too(tmp_path: Path) -> None:
    path = _write(tmp_path, "jobs:\n  churn:\n" + JOB + "    source: {table: g, key: [id]}\n")
    with pytest.raises(ConfigError, match=r"the key 'source' twice .*\(lines 4 and 5\)"):
        load_config(path)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = _write(tmp_path, "jobs:\n  a: &shared\n" + JOB
                  + "  b:\n    <<: *shared\n    source: {table: g, key: [id]}\n    output: {table: b_out}\n")
    cfg = load_config(path)
    assert (cfg.job("a").source.table, cfg.job("b").source.table) == ("f", "g")
    assert cfg.job("b").model.path == tmp_path.resolve() / "m.joblib"


def test_unquoted_numeric_job_name_says_quote_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "jobs:\n  123:\n" + JOB)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "job name 123 is read by YAML as a number" in str(err.value)
    assert "quote it" in str(err.value) and "pydantic" not in str(err.value)
    assert list(load_config(_write(tmp_path, "jobs:\n  '123':\n" + JOB)).jobs) == ["123"]


def test_empty_schema_part_is_named() -> None:
    with pytest.raises(ConfigError, match=r"source.table '.wine' has an empty schema part before the '.'"):
        config_from_dict({"jobs": {"j": {"model": {"path": "m"}, "source": {"table": ".wine", "key": ["id"]}}}})
    with pytest.raises(ConfigError, match=r"output.table 'wine.' has an empty table part after the '.'"):
        config_from_dict({"jobs": {"j": {"model": {"path": "m"}, "source": {"table": "f", "key": ["id"]},
                                         "output": {"table": "wine."}}}})


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresq://u@h/db", "postgresql+asyncpg://u@h/db",
                                 "oracle+cx_oracle://h"])
def test_unsupported_database_is_refused_at_load_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"database": {"url": url}})
    msg = str(err.value)
    assert "database.url" in msg and "does not support the database" in msg
    assert "sqlite:///path" in msg and "postgresql://user@host/db" in msg and "postgresql+psycopg2://" in msg


@pytest.mark.parametrize("url", ["sqlite:///x.db", "sqlite+pysqlite:///x.db", "sqlite://",
                                 "postgresql://u@h/db", "postgresql+psycopg://u@h/db",
                                 "postgresql+psycopg2://u@h/db", "postgres://u@h/db"])
def test_supported_databases_load(url: str) -> None:
    assert config_from_dict({"database": {"url": url}}).database.url.split(":")[0] == url.split(":")[0]


def test_unknown_home_directory_names_the_path() -> None:
    with pytest.raises(ConfigError, match=r"jobs.j.model.path '~nosuchuser_x/m.joblib' starts with '~'"):
        config_from_dict({"jobs": {"j": {"model": {"path": "~nosuchuser_x/m.joblib"},
                                         "source": {"table": "f", "key": ["id"]}}}})
    with pytest.raises(ConfigError, match=r"database.url path '~nosuchuser_x/x.db' starts with '~'"):
        config_from_dict({"database": {"url": "sqlite:///~nosuchuser_x/x.db"}})


def test_load_config_takes_a_mapping_a_str_or_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    from_dict = load_config({"jobs": {"j": {"model": {"path": "m.joblib"}, "source": {"table": "f", "key": ["id"]}}}})
    assert from_dict.base_dir == tmp_path.resolve()
    assert from_dict.job("j").model.path == tmp_path.resolve() / "m.joblib"
    path = _write(tmp_path, "jobs:\n  j:\n" + JOB)
    assert list(load_config(str(path)).jobs) == list(load_config(path).jobs) == ["j"]
    with pytest.raises(UsageError, match="a config is a file path .* or a mapping of its keys, not int"):
        load_config(42)  # type: ignore[arg-type]


def test_unset_database_url_variable_loads_and_require_url_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_DB_URL_VAR", raising=False)
    cfg = config_from_dict({"database": {"url": "${NO_SUCH_DB_URL_VAR}"}, "executor": {"kind": "dask"}})
    assert cfg.database.url == "${NO_SUCH_DB_URL_VAR}"
    with pytest.raises(ConfigError, match=r"database.url uses \$\{NO_SUCH_DB_URL_VAR\} but the environment "
                                          r"variable NO_SUCH_DB_URL_VAR is not set"):
        cfg.database.require_url()


def test_set_database_url_variable_expands_and_require_url_returns_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SCORER_DB_URL", "sqlite:///data/x.db")
    cfg = config_from_dict({"database": {"url": "${SCORER_DB_URL}"}}, base_dir=tmp_path)
    assert cfg.database.require_url() == f"sqlite:///{tmp_path.resolve()}/data/x.db"
    defaulted = config_from_dict({"database": {"url": "${NO_SUCH_DB_URL_VAR:-sqlite:///d.db}"}}, base_dir=tmp_path)
    assert defaulted.database.require_url() == f"sqlite:///{tmp_path.resolve()}/d.db"


def test_unset_variable_elsewhere_still_fails_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_TABLE_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"config key jobs.j.source.table uses \$\{NO_SUCH_TABLE_VAR\}"):
        config_from_dict({"jobs": {"j": {"model": {"path": "m"}, "source": {"table": "${NO_SUCH_TABLE_VAR}",
                                                                           "key": ["id"]}}}})


def test_schedule_next_works_without_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    path = _write(tmp_path, "database: {url: '${DATABASE_URL}'}\ntimezone: UTC\n"
                            "jobs:\n  nightly:\n" + JOB + "    schedule: '0 2 * * *'\n")
    result = cli_run(path, "schedule", "--next", "1", "--after", "2026-01-01T00:00")
    assert result.exit_code == 0, result.output
    assert "nightly" in result.output and "2026-01-01T02:00:00+00:00" in result.output


def test_job_name_key_is_set_by_the_loader_not_the_file() -> None:
    with pytest.raises(ConfigError, match=r"unknown key jobs.j.name: batch-scorer sets it itself"):
        config_from_dict({"jobs": {"j": {"name": "other", "model": {"path": "m"},
                                         "source": {"table": "f", "key": ["id"]}}}})
