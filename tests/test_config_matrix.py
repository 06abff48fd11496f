"""Job matrices, name selection and after: dependencies, proven on the config alone (no database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batch_scorer.config import Config, config_from_dict, load_config
from batch_scorer.errors import ConfigError, UsageError


def _job(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"path": "models/m.joblib"}, "source": {"table": "f", "key": ["id"]}}
    base.update(kw)
    return base


def _cfg(**jobs: dict[str, Any]) -> Config:
    return config_from_dict({"jobs": jobs})


def _composite() -> Config:
    return _cfg(
        churn=_job(
            matrix={"country": ["DE", "FR", "IT"], "tier": ["a", "b"]},
            model={"path": "models/churn_{country}_{tier}.joblib"},
            source={"table": "features_{country}", "key": ["id"], "where": {"tier": "{tier}", "year": 2025}},
            output={"table": "churn_{country}_{tier}", "pass_through": ["seg_{tier}"]},
            features=["x_{country}", "y"],
        ),
        other=_job(output={"table": "other_out"}),
    )


def test_composite_matrix_gives_one_job_per_combination_in_key_order() -> None:
    cfg = _composite()
    assert list(cfg.jobs) == [
        "churn.DE.a", "churn.DE.b", "churn.FR.a", "churn.FR.b", "churn.IT.a", "churn.IT.b", "other",
    ]
    job = cfg.job("churn.FR.b")
    assert (job.base, job.matrix_values) == ("churn", {"country": "FR", "tier": "b"})
    assert job.model.path == Path.cwd() / "models" / "churn_FR_b.joblib"
    assert job.source.table == "features_FR"
    assert job.source.where == {"tier": "b", "year": 2025}
    assert (job.output.table, job.output.pass_through) == ("churn_FR_b", ["seg_b"])
    assert job.features == ["x_FR", "y"]
    assert job.source.params == {}  # a table source filters with where:, not bind parameters
    plain = cfg.job("other")
    assert (plain.base, plain.matrix_values) == ("other", {})


def test_query_source_gets_matrix_values_as_bind_parameters_not_sql_text(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "jobs:\n"
        "  seg:\n"
        "    matrix: {country: [DE, FR], year: [2024, 2025]}\n"
        "    model: {registry: 'seg_{country}'}\n"
        "    source: {query: sql/seg.sql, key: [id]}\n"
        "    output: {table: seg_out}\n"
    )
    cfg = load_config(tmp_path / "config.yaml")
    job = cfg.job("seg.FR.2024")
    assert job.source.params == {"country": "FR", "year": "2024"}
    assert job.source.query == tmp_path / "sql" / "seg.sql"  # the file name is unchanged
    assert job.model.registry == "seg_FR"


def test_placeholder_in_schedule_and_labels_expands() -> None:
    cfg = _cfg(churn=_job(
        matrix={"hour": [1, 2]},
        schedule="0 {hour} * * *",
        labels={"query": "sql/labels_{hour}.sql", "label_column": "churned"},
        output={"table": "out"},
    ))
    job = cfg.job("churn.2")
    assert job.schedule == "0 2 * * *"
    assert job.labels is not None and job.labels.query == Path.cwd() / "sql" / "labels_2.sql"
    assert job.labels.params == {"hour": "2"}
    assert job.labels.key == ["id"]


def test_unknown_placeholder_names_job_key_and_hint() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(churn=_job(matrix={"country": ["DE"]}, output={"table": "p_{contry}"}))
    msg = str(err.value)
    assert "job 'churn'" in msg and "output.table" in msg and "{contry}" in msg
    assert "did you mean {country}?" in msg


@pytest.mark.parametrize("value", [1.5, "a b", "DE.x", None, [1]])
def test_matrix_value_that_is_not_a_plain_name_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"job 'churn': matrix value .* of key 'country' is not a plain name"):
        _cfg(churn=_job(matrix={"country": ["DE", value]}))


def test_yaml_boolean_matrix_value_suggests_quoting(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "jobs:\n  churn:\n    matrix: {country: [DE, NO]}\n"
        "    model: {path: m.joblib}\n    source: {table: f, key: [id]}\n"
    )
    with pytest.raises(ConfigError, match=r"matrix value False of key 'country'.*quote it, e.g. 'NO'"):
        load_config(tmp_path / "config.yaml")


def test_integer_matrix_value_becomes_text() -> None:
    assert list(_cfg(churn=_job(matrix={"week": [7, 8]}, output={"table": "o_{week}"})).jobs) == [
        "churn.7", "churn.8",
    ]


@pytest.mark.parametrize(("matrix", "needle"), [
    ({}, "matrix must be a non-empty mapping"),
    ([], "matrix must be a non-empty mapping"),
    ({"country": []}, "matrix key 'country' needs a non-empty list"),
    ({"country": "DE"}, "matrix key 'country' needs a non-empty list"),
    ({"as_of": ["x"]}, "matrix key 'as_of' is a bind parameter the tool itself passes"),
    ({"bad-key": ["x"]}, "matrix key 'bad-key' must be a plain identifier"),
])
def test_malformed_matrix_is_refused_naming_job_and_key(matrix: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(churn=_job(matrix=matrix))
    assert "job 'churn'" in str(err.value) and needle in str(err.value)


def test_repeated_matrix_value_is_a_name_clash() -> None:
    with pytest.raises(ConfigError, match=r"job 'churn': matrix key 'country' lists the value 'DE' twice"):
        _cfg(churn=_job(matrix={"country": ["DE", "FR", "DE"]}))


def test_expansion_clashing_with_a_hand_written_job_names_both() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(churn=_job(matrix={"country": ["DE", "FR"]}), **{"churn.DE": _job(output={"table": "x"})})
    msg = str(err.value)
    assert "two jobs are called 'churn.DE'" in msg
    assert "matrix job 'churn' with country=DE" in msg and "hand-written job 'churn.DE'" in msg


def test_matrix_name_equal_to_another_expansion_is_refused() -> None:
    with pytest.raises(ConfigError, match="the matrix job 'a.b' has the same name as the expansion"):
        _cfg(a=_job(matrix={"x": ["b"]}), **{"a.b": _job(matrix={"y": ["c"]})})


def test_expansion_with_an_invalid_table_name_names_job_key_and_value() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(churn=_job(matrix={"region": ["north", "south-east"]}, output={"table": "p_{region}"}))
    msg = str(err.value)
    assert "jobs.churn.output.table" in msg and "'p_south-east'" in msg
    assert "in job 'churn.south-east'" in msg and "region=south-east" in msg
    assert "'p_north'" not in msg  # the valid expansion is not blamed


def test_each_expansion_is_validated_like_a_hand_written_job_and_said_once() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(churn=_job(matrix={"c": ["DE", "FR"]}, output={"pass_thru": ["x"]}))
    msg = str(err.value)
    assert "unknown key jobs.churn.output.pass_thru (did you mean 'pass_through'?)" in msg
    assert msg.count("pass_thru") == 1


def test_unknown_key_hint_offers_matrix() -> None:
    with pytest.raises(ConfigError, match=r"unknown key jobs.churn.matrx \(did you mean 'matrix'\?\)"):
        _cfg(churn=_job(matrx={"c": ["DE"]}))


# --- selection ---------------------------------------------------------------


def test_selection_by_job_matrix_prefix_and_all() -> None:
    cfg = _composite()
    assert cfg.select(["churn"]) == [n for n in cfg.jobs if n.startswith("churn.")]
    assert cfg.select(["churn.FR.b"]) == ["churn.FR.b"]
    assert cfg.select(["churn.IT"]) == ["churn.IT.a", "churn.IT.b"]
    assert cfg.select(["other", "churn.DE", "churn.DE.a"]) == ["other", "churn.DE.a", "churn.DE.b"]
    assert cfg.select([], all_jobs=True) == list(cfg.jobs)
    assert config_from_dict({}).select([], all_jobs=True) == []


def test_single_matrix_value_selects_one_job() -> None:
    cfg = _cfg(churn=_job(matrix={"country": ["DE", "FR"]}))
    assert cfg.select(["churn.DE"]) == ["churn.DE"]
    assert cfg.job("churn.DE").matrix_values == {"country": "DE"}


def test_unknown_name_lists_jobs_and_matrix_names_with_hint() -> None:
    cfg = _composite()
    with pytest.raises(ConfigError) as err:
        cfg.select(["chrun"])
    msg = str(err.value)
    assert "unknown job 'chrun' (did you mean 'churn'?)" in msg
    assert "churn.DE.a" in msg and "other" in msg and "Matrix jobs" in msg


def test_bare_string_is_a_usage_error_saying_pass_a_list() -> None:
    with pytest.raises(UsageError, match=r"must be a list, e.g. \['churn'\]"):
        _composite().select("churn")


def test_names_with_all_or_neither_are_usage_errors() -> None:
    cfg = _composite()
    with pytest.raises(UsageError, match="not both"):
        cfg.select(["churn"], all_jobs=True)
    with pytest.raises(UsageError, match=r"name at least one job, or pass --all \(all_jobs=True from Python\)"):
        cfg.select([])


def test_job_of_a_matrix_name_points_to_its_expansions() -> None:
    with pytest.raises(ConfigError, match=r"'churn' is a matrix job; name one of its jobs \(churn.DE.a, "):
        _composite().job("churn")


# --- after / depends_on / order ----------------------------------------------


def _chain() -> Config:
    return _cfg(
        segments=_job(matrix={"country": ["DE", "FR"]}, output={"table": "seg_out"}),
        churn=_job(matrix={"country": ["DE", "FR"]}, after=["segments.{country}"], output={"table": "churn_out"}),
        report=_job(after=["churn", "segments"], output={"table": "report_out"}),
    )


def test_after_expands_per_matrix_value_and_matrix_names_mean_every_expansion() -> None:
    cfg = _chain()
    assert cfg.job("churn.DE").depends_on == ("segments.DE",)
    assert cfg.job("churn.FR").depends_on == ("segments.FR",)
    assert cfg.job("report").depends_on == ("segments.DE", "segments.FR", "churn.DE", "churn.FR")
    assert cfg.job("segments.DE").depends_on == ()


def test_order_puts_jobs_after_the_selected_jobs_they_depend_on() -> None:
    cfg = _chain()
    assert cfg.order(cfg.select(["report", "churn", "segments"])) == [
        ["segments.DE", "segments.FR"], ["churn.DE", "churn.FR"], ["report"],
    ]
    # Dependencies outside the selection are not added, but still order what is selected.
    assert cfg.order(["report", "segments.FR"]) == [["segments.FR"], ["report"]]
    assert cfg.order(["churn.DE"]) == [["churn.DE"]]


def test_order_refuses_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown job 'nope'"):
        _chain().order(["nope"])


def test_after_unknown_name_names_the_job_and_hints() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(segments=_job(output={"table": "s"}), churn=_job(after=["segmnts"]))
    msg = str(err.value)
    assert "job 'churn': after: names unknown job 'segmnts' (did you mean 'segments'?)" in msg


def test_after_cycle_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cycle \(after:\): a -> b -> c -> a"):
        _cfg(a=_job(after=["b"]), b=_job(after=["c"]), c=_job(after=["a"]))


def test_after_cycle_through_matrix_expansions_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cycle \(after:\): x.DE -> y.DE -> x.DE"):
        _cfg(
            x=_job(matrix={"c": ["DE"]}, after=["y.{c}"], output={"table": "xo"}),
            y=_job(matrix={"c": ["DE"]}, after=["x"], output={"table": "yo"}),
        )


def test_after_on_itself_is_refused() -> None:
    itself = r"job 'churn.DE' \(matrix job 'churn' with c=DE\): .* includes the job itself"
    with pytest.raises(ConfigError, match=itself):
        _cfg(churn=_job(matrix={"c": ["DE", "FR"]}, after=["churn"]))
