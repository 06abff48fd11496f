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


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise ``ValueError``."""
    if not IDENTIFIER.match(value):
        raise ValueError(
            f"{what} {value!r} is not a plain identifier "
            "(letters, digits and underscores, not starting with a digit)"
        )
    return value


def check_table_name(value: str, what: str) -> str:
    """Validate ``table`` or ``schema.table``."""
    parts = value.split(".")
    if len(parts) > 2:
        raise ValueError(f"{what} {value!r} must be 'table' or 'schema.table'")
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


def short_name(prefix: str, table: str, suffix: str = "") -> str:
    """``prefix_table_suffix``, cut to PostgreSQL's 63 characters with a hash when longer."""
    name = f"{prefix}_{table}{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"
