"""``evaluate``: a job's published predictions joined to its labels, into ``model_metrics``.

For each as_of the job has predictions for (in its output table): the labels of that
as_of are read through the source readers (a table filtered on its as_of column, or
a query given ``:as_of`` whose ``as_of`` column is checked too), joined to the
champion's published rows (the output table) and to each challenger's (the
``<output>_shadow`` table, when it exists) on the key, and each model's metrics
are computed (:mod:`batch_scorer.monitoring.metrics`).

Replacement: the figures of the as_ofs that have labelled predictions replace the
job's earlier figures for those as_ofs (delete, then insert, in one transaction),
so re-running after more labels arrived updates them. An as_of without any
labelled prediction is reported as not labelled yet; figures it had (labels
since purged) are kept. Memory: one as_of's predictions and labels at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection, Engine

from batch_scorer.errors import UsageError
from batch_scorer.monitoring.metrics import (
    LABEL,
    Task,
    compute,
    foreign_labels,
    join_labels,
    unambiguous_labels,
)
from batch_scorer.storage import profiles
from batch_scorer.storage.schema import utcnow
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import read_chunks
from batch_scorer.storage.views import shadow_table_name

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class EvaluationSpec:
    """What evaluating one job needs (the API builds it from the job's configuration).

    ``labels``: the labels source; its ``key`` columns match the predictions' ``keys``
    position by position. ``classes``: the classifier's classes (``classes_[1]`` is the
    positive class of a binary one).
    """

    job: str
    output: str
    keys: tuple[str, ...]
    labels: SourceSpec
    label_column: str
    classifier: bool
    classes: tuple[Any, ...] | None = None
    chunk_size: int = 50_000


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` did for one job: the ``model_metrics`` rows it wrote (as dicts),
    the as_ofs evaluated and those without labelled predictions, and notes on metrics
    left out."""

    job: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    evaluated: tuple[date, ...] = ()
    unlabelled: tuple[date, ...] = ()
    notes: tuple[str, ...] = ()
    # Why the job could not be evaluated (nothing stored for it), and the exit code that means.
    error: str | None = None
    exit_code: int = 0
    cause: BaseException | None = field(default=None, compare=False, repr=False)


def evaluate_job(engine: Engine, spec: EvaluationSpec) -> Evaluation:
    """Evaluate one job (module doc) and store its figures."""
    rows: list[dict[str, Any]] = []
    evaluated: list[date] = []
    unlabelled: list[date] = []
    notes: dict[str, None] = {}
    foreign: dict[date, list[str]] = {}
    with engine.connect() as conn:
        main, shadow = profiles.output_tables(conn, spec.output, shadow_table_name(spec.output))
        if main is None:
            return Evaluation(spec.job, notes=(f"no predictions yet: the output table {spec.output} does not exist",))
        pruned = profiles.pruned_as_ofs(conn, main, spec.job)
        if pruned:
            notes[f"{len(pruned)} as_of(s) (e.g. {min(pruned)}) were not evaluated: prune removed some of their "
                  "rows since they were published; their earlier figures, if any, are kept"] = None
        for as_of in profiles.prediction_as_ofs(conn, main, spec.job):
            if as_of in pruned:
                continue
            labels, conflicting = unambiguous_labels(read_labels(conn, spec, as_of), spec.keys)
            if conflicting:
                notes[f"as_of {as_of}: {conflicting} key(s) labelled twice with different labels were left out "
                      "(fix the labels source: one label per key and as_of)"] = None
            foreign[as_of] = foreign_labels(labels[LABEL], spec.classes if spec.classifier else None)
            if foreign[as_of]:
                unlabelled.append(as_of)
                continue
            found = _figures(conn, spec, as_of, labels, main, CHAMPION, notes)
            if shadow is not None and len(labels):
                found += _figures(conn, spec, as_of, labels, shadow, CHALLENGER, notes)
            (evaluated if found else unlabelled).append(as_of)
            rows += found
    _check_foreign(spec, {d: v for d, v in foreign.items() if v}, evaluated, notes)
    profiles.replace_metrics(engine, spec.job, evaluated, rows)
    return Evaluation(spec.job, rows, tuple(evaluated), tuple(unlabelled), tuple(notes))


def _check_foreign(spec: EvaluationSpec, foreign: dict[date, list[str]], evaluated: list[date],
                   notes: dict[str, None]) -> None:
    """As_ofs whose labels are none of the model's classes: a wrong ``labels.label_column``
    when no as_of has a usable label (:class:`UsageError`, nothing stored), else a note
    (those as_ofs keep their earlier figures)."""
    if not foreign:
        return
    day, values = next(iter(foreign.items()))
    text = (f"none of the labels of {len(foreign)} as_of(s) (e.g. {day}: {values}) is one of the model's "
            f"classes {[str(c) for c in spec.classes or ()]}")
    if not evaluated:
        raise UsageError(f"job {spec.job!r}: {text}. Is labels.label_column {spec.label_column!r} the right "
                         "column? Nothing was stored.")
    notes[f"{text}; those as_ofs were not evaluated and keep their earlier figures"] = None


def _figures(
    conn: Connection, spec: EvaluationSpec, as_of: date, labels: pd.DataFrame, table: Any, role: str,
    notes: dict[str, None],
) -> list[dict[str, Any]]:
    """The metric rows of one table's models (grouped by model version, and challenger)."""
    if labels.empty:
        return []
    joined = join_labels(profiles.read_predictions(conn, table, spec.job, as_of, spec.keys), labels, spec.keys)
    if role == CHALLENGER and len(joined):
        joined = joined.assign(model_version=_challenger_versions(conn, joined))
    by = ["challenger", "model_version"] if role == CHALLENGER else ["model_version"]
    out: list[dict[str, Any]] = []
    now = utcnow()
    for group, part in joined.groupby(by, sort=True, dropna=False):
        challenger, version = group if role == CHALLENGER else (None, group[0])
        task = Task.of(spec.classifier, spec.classes, has_scores=bool(part["score"].notna().any()))
        metrics, why = compute(task, part)
        notes.update(dict.fromkeys(why))
        out += [{"as_of": as_of, "model_version": str(version), "role": role, "challenger": challenger,
                 "metric": m.metric, "value": m.value, "rows": m.rows, "evaluated_at": now} for m in metrics]
    return out


def _challenger_versions(conn: Connection, joined: pd.DataFrame) -> list[str]:
    """Each shadow row's challenger version (its label where the run recorded none)."""
    versions = profiles.challenger_versions(conn, sorted(set(joined["run_id"].astype(int))))
    return [versions.get((int(r), str(c)), str(c)) for r, c in zip(joined["run_id"], joined["challenger"], strict=True)]


def read_labels(conn: Connection, spec: EvaluationSpec, as_of: date) -> pd.DataFrame:
    """One as_of's labels: the predictions' key column names and the label in :data:`LABEL`."""
    src = spec.labels
    query = src.query is not None
    columns = [*src.key, spec.label_column, *(["as_of"] if query else [])]
    values = [spec.label_column, *(["as_of"] if query else [])]
    parts = []
    with contextlib.closing(read_chunks(conn, src, as_of, columns, spec.chunk_size, values)) as chunks:
        for chunk in chunks:
            if query:  # a query that ignores :as_of returns every day: keep this one's
                chunk = chunk[_days(chunk["as_of"]) == as_of]
            parts.append(chunk.loc[:, [*src.key, spec.label_column]])
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*src.key, spec.label_column])
    return frame.set_axis([*spec.keys, LABEL], axis=1)


def _days(values: pd.Series) -> pd.Series:
    """A date or timestamp column as dates (its day), unparsable values NaT."""
    return pd.to_datetime(values.astype(object), errors="coerce").dt.date
