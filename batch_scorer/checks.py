"""Row-level checks: which rows of a chunk can be scored, and why the others cannot.

Pure functions of a DataFrame; the pipeline records what they reject in
``rejected_rows``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Rejections:
    """Rejected rows of a run so far: (key text, reason) pairs."""

    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, frame: pd.DataFrame, keys: Sequence[str], reason: str) -> None:
        for key in key_texts(frame, keys):
            self.rows.append((key, reason))

    def __len__(self) -> int:
        return len(self.rows)

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for _, reason in self.rows:
            counts[reason] = counts.get(reason, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])[:n]


def key_texts(frame: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """Each row's key as JSON text, e.g. ``{"customer_id": 42}``."""
    values = frame.loc[:, list(keys)].astype(object)
    return [
        json.dumps({k: _jsonable(v) for k, v in zip(keys, row, strict=True)}, default=str)
        for row in values.itertuples(index=False, name=None)
    ]


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, int | float | str | bool):
        return value
    return str(value)


def split_null_keys(frame: pd.DataFrame, keys: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows with every key set, rows with a NULL key)``."""
    bad = frame.loc[:, list(keys)].isna().any(axis=1)
    if not bad.any():
        return frame, frame.iloc[0:0]
    return frame.loc[~bad].reset_index(drop=True), frame.loc[bad]
