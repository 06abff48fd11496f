"""Names: what a table, column or job may be called, and the names the tool derives.

A base module: config validates with these rules, storage builds its tables and
views with them, so the two can never disagree (e.g. which view name an output
table implies).
"""

from __future__ import annotations

import hashlib
import re

# Table and column names must be plain identifiers (optionally schema.table for
# tables): they are quoted by SQLAlchemy anyway, this rejects hostile input early.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
JOB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")

# Columns every output table has; a source column of one of these names cannot
# be a key or pass-through column.
RESERVED_OUTPUT_COLUMNS = (
    "job",
    "as_of",
    "model_version",
    "run_id",
    "scored_at",
    "prediction",
    "score",
)
LATEST_VIEW_SUFFIX = "_latest"
DAILY_SUFFIX = "_daily"
SHADOW_SUFFIX = "_shadow"
# Names the tool derives from every output table X (X_latest view, X_daily
# summary, X_shadow challenger scores); no output table may be called like one.
DERIVED_SUFFIXES = (LATEST_VIEW_SUFFIX, DAILY_SUFFIX, SHADOW_SUFFIX)

# The tool's own tables and views; no output table may use one of these names.
TOOL_TABLE_NAMES = (
    "scoring_runs",
    "rejected_rows",
    "job_locks",
    "model_versions",
    "model_aliases",
    "model_alias_events",
    "shadow_comparisons",
    "feature_profiles",
    "drift",
    "model_metrics",
    "scoring_runs_bi",
    "drift_latest",
)

# Bind parameter names the tool itself passes to source statements (a query's
# :as_of; a table source's as_of range), so a matrix key may not use them.
RESERVED_BIND_PARAMS = ("as_of", "as_of_lo", "as_of_hi")

# A "plain name": matrix values, model registry names, model aliases.
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise ``ValueError``."""
    if not IDENTIFIER.match(value):
        raise ValueError(
            f"{what} {value!r} is not a plain identifier "
            "(letters, digits and underscores, not starting with a digit)"
        )
    return value


def check_plain_name(value: str, what: str) -> str:
    """Return ``value`` if it is a plain name (letters, digits, '_', '-'), else raise ``ValueError``."""
    if not PLAIN_NAME.match(value):
        raise ValueError(
            f"{what} {value!r} is not a plain name "
            "(letters, digits, '_' and '-', at most 100)"
        )
    return value


def check_table_name(value: str, what: str) -> str:
    """Validate ``table`` or ``schema.table``."""
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(f"{what} {value!r} must be 'table' or 'schema.table'")
    if len(parts) == 2 and not all(parts):
        empty = "schema part before" if not parts[0] else "table part after"
        raise ValueError(
            f"{what} {value!r} has an empty {empty} the '.'; "
            "write 'table' or 'schema.table'"
        )
    for part in parts:
        check_identifier(part, what)
    return value


def split_table_name(name: str) -> tuple[str | None, str]:
    """``'schema.table'`` -> ``('schema', 'table')``; ``'table'`` -> ``(None, 'table')``."""
    if "." in name:
        schema, table = name.split(".", 1)
        return schema, table
    return None, name


def latest_view_name(output_name: str) -> str:
    """The ``_latest`` view of an output table (``schema.table`` keeps its schema)."""
    return output_name + LATEST_VIEW_SUFFIX


def derived_names(output_table: str) -> tuple[str, ...]:
    """The names the tool derives from an output table: ``X_latest``, ``X_daily``, ``X_shadow``.

    A ``schema.table`` output keeps its schema (``s.t`` -> ``s.t_latest``, ...).
    """
    return tuple(output_table + suffix for suffix in DERIVED_SUFFIXES)


def short_name(prefix: str, table: str, suffix: str = "") -> str:
    """``prefix_table_suffix``, cut to PostgreSQL's 63 characters with a hash when longer."""
    name = f"{prefix}_{table}{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"
