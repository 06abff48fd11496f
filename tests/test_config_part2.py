"""Part 2 config sections: registry models, challengers, where:, monitor, labels, executor,
retention, defaults, runtime knobs and their environment overrides, table clashes.
Pure config: no database, no model file."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from batch_scorer.config import Config, config_from_dict, load_config
from batch_scorer.errors import ConfigError
from batch_scorer.names import TOOL_TABLE_NAMES, derived_names

SHA = "ab" * 32


def _job(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"path": "models/m.joblib"}, "source": {"table": "f", "key": ["id"]}}
    base.update(kw)
    return base


def _one(**kw: Any) -> Config:
    return config_from_dict({"jobs": {"j": _job(**kw)}})


def _refused(needles: tuple[str, ...], raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


# --- models --------------------------------------------------------------------


def test_file_model_version_defaults_to_the_pinned_sha256_prefix() -> None:
    model = _one(model={"path": "m.joblib", "sha256": SHA.upper()}).job("j").model
    assert (model.sha256, model.version, model.is_registry) == (SHA, SHA[:12], False)
    assert _one(model={"path": "m.joblib", "version": 3}).job("j").model.version == "3"
    assert _one(model={"path": "m.joblib"}).job("j").model.version is None  # the loader hashes the file


def test_registry_model_defaults_to_the_champion_alias() -> None:
    model = _one(model={"registry": "churn"}).job("j").model
    assert (model.registry, model.alias, model.version, model.path, model.is_registry) == (
        "churn", "champion", None, None, True,
    )
    pinned = _one(model={"registry": "churn", "version": 4}).job("j").model
    assert (pinned.alias, pinned.version) == (None, 4)


@pytest.mark.parametrize(("model", "needle"), [
    ({"path": "m.joblib", "registry": "r"}, "exactly one of model.path"),
    ({"sha256": SHA}, "exactly one of model.path"),
    ({"registry": "r", "alias": "a", "version": 2}, "model.alias or model.version, not both"),
    ({"registry": "r", "version": 0}, "must be a registry version number >= 1"),
    ({"registry": "r", "version": "2"}, "must be a registry version number >= 1"),
    ({"registry": "r", "sha256": SHA}, "model.sha256 only applies to model.path"),
    ({"registry": "churn {x}"}, "model.registry 'churn {x}' is not a plain name"),
    ({"registry": "r", "alias": "12"}, "is all digits"),
    ({"path": "m.joblib", "alias": "champion"}, "model.alias needs model.registry"),
    ({"path": "m.skops", "trusted_types": ["not a type"]}, "trusted type 'not a type'"),
])
def test_model_forms_are_exclusive_and_checked(model: dict[str, Any], needle: str) -> None:
    _refused(("jobs.j.model", needle), {"jobs": {"j": _job(model=model)}})


def test_trusted_types_are_kept() -> None:
    types = ["sklearn.ensemble._forest.RandomForestClassifier"]
    assert _one(model={"path": "m.skops", "trusted_types": types}).job("j").model.trusted_types == types
    assert _one().job("j").model.trusted_types == []


def test_challengers_are_aliases_or_versions_of_a_registry_model() -> None:
    job = _one(model={"registry": "churn"}, challengers=["candidate", 7]).job("j")
    assert job.challengers == ["candidate", 7]


@pytest.mark.parametrize(("model", "challengers", "needle"), [
    ({"path": "m.joblib"}, ["candidate"], "challengers need a registry model"),
    ({"registry": "r"}, ["candidate", "candidate"], "lists 'candidate' twice"),
    ({"registry": "r"}, ["champion"], "'champion' is the job's own model"),
    ({"registry": "r", "version": 3}, [3], "3 is the job's own model"),
    ({"registry": "r"}, [0], "must be a version number >= 1"),
    ({"registry": "r"}, [True], "must be an alias or a version number"),
])
def test_bad_challengers_are_refused(model: dict[str, Any], challengers: list[Any], needle: str) -> None:
    _refused(("jobs.j", needle), {"jobs": {"j": _job(model=model, challengers=challengers)}})


# --- source.where ----------------------------------------------------------------


def test_where_holds_scalar_equality_filters() -> None:
    where = {"country": "DE", "tier": 2, "score": 0.5, "active": True, "day": date(2025, 1, 31)}
    job = _one(source={"table": "f", "key": ["id"], "where": where}).job("j")
    assert job.source.where == where


@pytest.mark.parametrize(("source", "needle"), [
    ({"table": "f", "key": ["id"], "where": {"bad col": 1}}, "source.where column 'bad col'"),
    ({"table": "f", "key": ["id"], "where": {"c": None}}, "source.where value for column 'c'"),
    ({"table": "f", "key": ["id"], "where": {"c": [1, 2]}}, "source.where value for column 'c'"),
    ({"query": "q.sql", "key": ["id"], "where": {"c": 1}}, "source.where only applies to source.table"),
])
def test_bad_where_is_refused(source: dict[str, Any], needle: str) -> None:
    _refused(("jobs.j.source", needle), {"jobs": {"j": _job(source=source)}})


def test_params_are_set_by_the_loader_only() -> None:
    _refused(("jobs.j.source.params",), {"jobs": {"j": _job(source={"query": "q.sql", "key": ["id"],
                                                                     "params": {"a": "b"}})}})
    _refused(("jobs.j.depends_on",), {"jobs": {"j": _job(depends_on=["x"])}})


# --- monitor, labels -------------------------------------------------------------


def test_monitor_defaults_and_inheritance_key_by_key() -> None:
    plain = _one().job("j").monitor
    assert (plain.enabled, plain.bins, plain.warn_psi, plain.alert_psi, plain.on_alert) == (
        True, 10, 0.1, 0.25, "warn",
    )
    cfg = config_from_dict({
        "defaults": {"monitor": {"bins": 20, "on_alert": "fail"}},
        "jobs": {"a": _job(monitor={"warn_psi": 0.2}, output={"table": "a_out"}), "b": _job()},
    })
    a, b = cfg.job("a").monitor, cfg.job("b").monitor
    assert (a.bins, a.on_alert, a.warn_psi) == (20, "fail", 0.2)
    assert (b.bins, b.on_alert, b.warn_psi) == (20, "fail", 0.1)


@pytest.mark.parametrize(("monitor", "needle"), [
    ({"bins": 1}, "jobs.j.monitor.bins"),
    ({"bins": 101}, "jobs.j.monitor.bins"),
    ({"warn_psi": 0}, "jobs.j.monitor.warn_psi"),
    ({"warn_psi": 0.3}, "warn_psi 0.3 must be <= alert_psi 0.25"),
    ({"on_alert": "page"}, "jobs.j.monitor.on_alert"),
])
def test_bad_monitor_settings_are_refused(monitor: dict[str, Any], needle: str) -> None:
    _refused((needle,), {"jobs": {"j": _job(monitor=monitor)}})


def test_inherited_monitor_is_checked_with_the_jobs_values() -> None:
    _refused(("jobs.j.monitor", "warn_psi 0.2 must be <= alert_psi 0.15"),
             {"defaults": {"monitor": {"warn_psi": 0.2}}, "jobs": {"j": _job(monitor={"alert_psi": 0.15})}})


def test_labels_table_and_query_forms(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "jobs:\n"
        "  t:\n    model: {path: m.joblib}\n    source: {table: f, key: [id, day]}\n"
        "    output: {table: t_out}\n"
        "    labels: {table: churn_outcomes, as_of_column: outcome_date, label_column: label}\n"
        "  q:\n    model: {path: m.joblib}\n    source: {table: f, key: [id]}\n"
        "    output: {table: q_out}\n"
        "    labels: {query: sql/labels.sql, label_column: label, key: [customer]}\n"
    )
    cfg = load_config(tmp_path / "config.yaml")
    t, q = cfg.job("t").labels, cfg.job("q").labels
    assert t is not None and q is not None
    assert (t.table, t.as_of_column, t.label_column, t.key, t.query) == (
        "churn_outcomes", "outcome_date", "label", ["id", "day"], None,
    )
    assert (q.query, q.key, q.table, q.params) == (tmp_path / "sql" / "labels.sql", ["customer"], None, {})
    assert cfg.job("t").labels is not None and _one().job("j").labels is None


@pytest.mark.parametrize(("labels", "needle"), [
    ({"label_column": "y"}, "exactly one of labels.table or labels.query"),
    ({"table": "o", "query": "l.sql", "label_column": "y"}, "exactly one of labels.table or labels.query"),
    ({"table": "o", "label_column": "y"}, "labels.table needs labels.as_of_column"),
    ({"query": "l.sql", "as_of_column": "d", "label_column": "y"}, "as_of_column only applies to labels.table"),
    ({"table": "o", "as_of_column": "d"}, "missing key jobs.j.labels.label_column"),
    ({"table": "o", "as_of_column": "d", "label_column": "id"}, "'id' is also a key column"),
    ({"table": "o", "as_of_column": "d", "label_column": "y", "tabel": "x"}, "did you mean 'table'"),
])
def test_bad_labels_are_refused(labels: dict[str, Any], needle: str) -> None:
    _refused((needle,), {"jobs": {"j": _job(labels=labels)}})


# --- executor, retention, defaults, runtime -------------------------------------


def test_top_level_sections_have_safe_defaults() -> None:
    cfg = config_from_dict({})
    assert (cfg.executor.kind, cfg.executor.address, cfg.executor.partitions) == ("local", None, None)
    r = cfg.retention
    assert (r.predictions_keep_as_ofs, r.predictions_days, r.rejected_rows_days, r.ledger_days) == (
        None, None, 30, 400,
    )
    assert (cfg.defaults.parallel_jobs, cfg.defaults.future_days) == (10, 1)
    assert (cfg.runtime.model_threads, cfg.runtime.scoring_threads, cfg.runtime.progress_seconds) == (
        None, None, 10.0,
    )
    assert cfg.scheduler.allow_seconds_field is False


def test_dask_executor_with_postgresql() -> None:
    cfg = config_from_dict({"database": {"url": "postgresql://scorer@db/analytics"},
                            "executor": {"kind": "dask", "address": "tcp://sched:8786", "partitions": 8}})
    assert (cfg.executor.kind, cfg.executor.address, cfg.executor.partitions) == ("dask", "tcp://sched:8786", 8)


def test_dask_with_sqlite_says_dask_needs_postgresql() -> None:
    _refused(("executor.kind dask needs a PostgreSQL database.url", "workers read the database themselves"),
             {"database": {"url": "sqlite:///x.db"}, "executor": {"kind": "dask"}})


@pytest.mark.parametrize(("raw", "needle"), [
    ({"executor": {"kind": "spark"}}, "executor.kind"),
    ({"executor": {"partitions": 0}}, "executor.partitions"),
    ({"executor": {"address": "tcp://a b"}}, "executor.address"),
    ({"retention": {"ledger_days": 0}}, "retention.ledger_days"),
    ({"retention": {"predictions_keep_as_ofs": -1}}, "retention.predictions_keep_as_ofs"),
    ({"retention": {"keep": 3}}, "unknown key retention.keep"),
    ({"defaults": {"parallel_jobs": 65}}, "defaults.parallel_jobs"),
    ({"defaults": {"parallel_jobs": 0}}, "defaults.parallel_jobs"),
    ({"defaults": {"future_days": 367}}, "defaults.future_days"),
    ({"runtime": {"model_threads": 0}}, "runtime.model_threads"),
    ({"runtime": {"progress_seconds": -1}}, "runtime.progress_seconds"),
])
def test_out_of_range_settings_name_their_key(raw: dict[str, Any], needle: str) -> None:
    _refused((needle,), raw)


def test_runtime_knobs_resolve_without_reading_the_environment() -> None:
    cfg = config_from_dict({"runtime": {"model_threads": 3, "scoring_threads": 1}})
    assert (cfg.runtime.resolved_model_threads(), cfg.runtime.resolved_scoring_threads()) == (3, 1)
    cores = os.cpu_count() or 1
    default = config_from_dict({}).runtime
    assert default.resolved_model_threads() == max(1, cores - 2)
    assert default.resolved_scoring_threads() == (2 if cores >= 2 else 1)


def test_environment_overrides_runtime_knobs_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SCORER_MODEL_THREADS", "5")
    monkeypatch.setenv("BATCH_SCORER_SCORING_THREADS", "3")
    monkeypatch.setenv("BATCH_SCORER_PROGRESS_SECONDS", "0.5")
    monkeypatch.setenv("BATCH_SCORER_ALLOW_SECONDS_CRON", "1")
    cfg = config_from_dict({"runtime": {"model_threads": 2}})
    monkeypatch.delenv("BATCH_SCORER_MODEL_THREADS")  # later changes do not reach a loaded config
    assert cfg.runtime.resolved_model_threads() == 5
    assert cfg.runtime.resolved_scoring_threads() == 3
    assert cfg.runtime.progress_seconds == 0.5
    assert cfg.scheduler.allow_seconds_field is True


@pytest.mark.parametrize(("name", "value"), [
    ("BATCH_SCORER_MODEL_THREADS", "four"),
    ("BATCH_SCORER_SCORING_THREADS", "1.5"),
    ("BATCH_SCORER_MODEL_THREADS", "0"),
    ("BATCH_SCORER_PROGRESS_SECONDS", "soon"),
    ("BATCH_SCORER_ALLOW_SECONDS_CRON", "yes"),
])
def test_malformed_environment_override_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"environment variable {name}={value!r}"):
        config_from_dict({})


def test_seconds_cron_field_follows_the_config_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCH_SCORER_ALLOW_SECONDS_CRON", raising=False)
    fast = {"j": _job(schedule="*/5 * * * * *")}
    _refused(("jobs.j.schedule", "has 6 fields"), {"jobs": fast})
    cfg = config_from_dict({"scheduler": {"allow_seconds_field": True}, "jobs": fast})
    assert cfg.job("j").schedule == "*/5 * * * * *"
    _refused(("jobs.j.schedule", "seconds field"),
             {"scheduler": {"allow_seconds_field": True}, "jobs": {"j": _job(schedule="99 * * * * *")}})


# --- table clashes ---------------------------------------------------------------


def test_output_equal_to_another_jobs_source_names_both() -> None:
    _refused(("job 'a' writes output table 'features'", "job 'b' reads as its source.table"),
             {"jobs": {"a": _job(output={"table": "features"}),
                       "b": _job(source={"table": "Features", "key": ["id"]}, output={"table": "b_out"})}})
    _refused(("job 'a' reads and writes the same table 'f'",), {"jobs": {"a": _job(output={"table": "f"})}})


@pytest.mark.parametrize("table", [*TOOL_TABLE_NAMES, "analytics.scoring_runs"])
def test_output_equal_to_a_tool_table_is_refused(table: str) -> None:
    _refused((f"output.table {table!r} is the name of one of batch-scorer's own tables",),
             {"jobs": {"a": _job(output={"table": table})}})


def test_output_equal_to_a_derived_name_of_another_output_is_refused() -> None:
    assert derived_names("s.p") == ("s.p_latest", "s.p_daily", "s.p_shadow")
    for suffix in ("_latest", "_daily", "_shadow"):
        _refused((f"job 'b': output.table 'p{suffix}'", "output table 'p' (of job 'a')"),
                 {"jobs": {"a": _job(output={"table": "p"}), "b": _job(output={"table": f"p{suffix}"})}})


def test_reading_another_jobs_latest_view_is_allowed() -> None:
    cfg = config_from_dict({"jobs": {"a": _job(output={"table": "p"}),
                                     "b": _job(source={"table": "p_latest", "key": ["id"]},
                                               output={"table": "q"})}})
    assert cfg.job("b").source.table == "p_latest"


def test_shared_output_needs_the_same_pass_through_columns_in_any_order() -> None:
    _refused(("jobs 'a' and 'b' write to output table 'predictions'", "different output.pass_through"),
             {"jobs": {"a": _job(output={"pass_through": ["x", "y"]}), "b": _job(output={"pass_through": ["x"]})}})
    cfg = config_from_dict({"jobs": {"a": _job(output={"pass_through": ["x", "y"]}),
                                     "b": _job(output={"pass_through": ["y", "x"]})}})
    assert [j.name for j in cfg.jobs.values() if j.output.table == "predictions"] == ["a", "b"]
