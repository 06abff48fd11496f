"""The exact-column convention, owned by the storage layer.

A column that is both a model feature and a key or pass-through column is read
twice: once converted the way the model was fitted (the feature), once with
its exact database type (what the output table stores). The exact copy sits
beside the feature under :func:`exact_name`; writers take a key or
pass-through column through :func:`exact_column`, so they never need to know
which reader produced the chunk.
"""

from __future__ import annotations

import pandas as pd

EXACT_PREFIX = "__bs_exact__"


def exact_name(column: str) -> str:
    """Where a column that is both a feature and a key/pass-through keeps its exact values."""
    return EXACT_PREFIX + column


def exact_column(rows: pd.DataFrame, name: str) -> pd.Series:
    """A key/pass-through column of a chunk: its exact copy if the reader kept one beside a feature."""
    exact = exact_name(name)
    return rows[exact] if exact in rows.columns else rows[name]
