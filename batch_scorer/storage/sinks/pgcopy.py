"""PostgreSQL binary COPY, encoded column-wise with numpy (no Python work per row).

The binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html,
"Binary Format") is, per row, an int16 field count, then per field an int32
length (-1 for NULL) and the value in the type's ``*_send`` representation.

Encoding: every column becomes a fixed-width slab of a ``(rows, width)`` byte
matrix (its length prefix plus the widest value in the chunk), together with
a mask of the bytes that are real (NULLs and short strings leave padding).
``matrix[mask]`` then *is* the COPY payload, rows in order: one vectorised
compress instead of formatting values one by one. Constants (the run's job,
as_of, model version, run id and timestamp) are encoded once per run.

Only ``numeric`` and ``uuid`` values are encoded per value (there is no
vectorised form for them); they are rare in keys and pass-through columns.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)

_PG_EPOCH_DAYS = 10957  # 2000-01-01 - 1970-01-01
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400_000_000
# Blocks of at most this many matrix bytes keep memory bounded when a text
# value is unusually long.
_BLOCK_BYTES = 32 << 20

# type OID -> (kind, fixed width or 0 for variable)
TYPES: dict[int, tuple[str, int]] = {
    16: ("bool", 1),
    21: ("int2", 2),
    23: ("int4", 4),
    20: ("int8", 8),
    700: ("float4", 4),
    701: ("float8", 8),
    1700: ("numeric", 0),
    25: ("text", 0),
    1043: ("text", 0),
    1042: ("text", 0),
    19: ("text", 0),
    1082: ("date", 4),
    1114: ("timestamp", 8),
    1184: ("timestamptz", 8),
    2950: ("uuid", 16),
}


class UnsupportedType(Exception):
    """A column type the binary encoder does not handle (the caller falls back)."""


def supported(oid: int) -> bool:
    return oid in TYPES


def encode_constant(value: Any, oid: int) -> bytes:
    """One value's field bytes (length prefix included)."""
    if value is None:
        return struct.pack(">i", -1)
    data = _encode_objects([value], oid)[0]
    return struct.pack(">i", len(data)) + data


def encode_rows(columns: Sequence[pa.Array | bytes], oids: Sequence[int], n: int) -> bytes:
    """The COPY payload (no header/trailer) for ``n`` rows of the given columns.

    ``columns[i]`` is an Arrow array of length ``n``, or a run's constant as the bytes
    :func:`encode_constant` made; ``oids[i]`` is the target column's type OID.
    """
    if n == 0:
        return b""
    cells = [
        _const_cell(c, n)
        if isinstance(c, bytes)
        else _array_cell(c, oid)
        for c, oid in zip(columns, oids, strict=True)
    ]
    width = 2 + sum(c.width for c in cells)
    step = max(1, _BLOCK_BYTES // width)
    parts = []
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        parts.append(_assemble(cells, len(columns), lo, hi, width))
    return b"".join(parts)


@dataclass
class _Cell:
    width: int  # 4 + widest value
    prefix: np.ndarray | None  # (n,) big-endian int32 lengths, or None for a constant
    data: np.ndarray | None  # (n, width-4) uint8, or None for constants
    keep: np.ndarray | None  # (n, width-4) bool, None when every byte is real
    const: bytes | None = None


def _const_cell(encoded: bytes, n: int) -> _Cell:
    return _Cell(len(encoded), None, None, None, encoded)


def _assemble(cells: list[_Cell], ncols: int, lo: int, hi: int, width: int) -> bytes:
    m = hi - lo
    mat = np.empty((m, width), dtype=np.uint8)
    keep: np.ndarray | None = None
    mat[:, 0:2] = np.frombuffer(struct.pack(">h", ncols), dtype=np.uint8)
    pos = 2
    for cell in cells:
        if cell.const is not None:
            mat[:, pos : pos + cell.width] = np.frombuffer(cell.const, dtype=np.uint8)
            pos += cell.width
            continue
        assert cell.prefix is not None and cell.data is not None
        mat[:, pos : pos + 4] = cell.prefix[lo:hi].view(np.uint8).reshape(m, 4)
        mat[:, pos + 4 : pos + cell.width] = cell.data[lo:hi]
        if cell.keep is not None:
            if keep is None:
                keep = np.ones((m, width), dtype=bool)
            keep[:, pos + 4 : pos + cell.width] = cell.keep[lo:hi]
        pos += cell.width
    if keep is None:
        return mat.tobytes()
    return mat[keep].tobytes()


def _array_cell(arr: pa.Array | pa.ChunkedArray, oid: int) -> _Cell:
    if oid not in TYPES:
        raise UnsupportedType(f"type oid {oid}")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr.type, pa.ExtensionType):
        arr = arr.storage
    kind, width = TYPES[oid]
    n = len(arr)
    valid = _valid(arr)
    if kind in ("text", "numeric", "uuid"):
        return _variable_cell(arr, kind, valid)
    values = _fixed_values(arr, kind)
    data = values.view(np.uint8).reshape(n, width)
    lengths = np.where(valid, width, -1).astype(">i4")
    keep = None if valid.all() else np.repeat(valid[:, None], width, axis=1)
    return _Cell(4 + width, lengths, data, keep)


def _valid(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        valid = np.ones(len(arr), dtype=bool)
    else:
        valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_floating(arr.type):
        # NaN is NULL, as everywhere else in the tool (pandas' missing value).
        values = arr.fill_null(0).to_numpy(zero_copy_only=False)
        valid &= ~np.isnan(values)
    return valid


def _fixed_values(arr: pa.Array, kind: str) -> np.ndarray:
    t = arr.type
    if kind == "bool":
        return np.asarray(pc.cast(arr, pa.bool_()).fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint8)
    if kind in ("int2", "int4", "int8"):
        target = {"int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64()}[kind]
        if pa.types.is_floating(t):
            arr = pc.if_else(pc.is_nan(arr), None, arr)
        out = pc.cast(arr, target).fill_null(0).to_numpy(zero_copy_only=False)
        return out.astype(">" + out.dtype.str[1:])
    if kind in ("float4", "float8"):
        target = pa.float32() if kind == "float4" else pa.float64()
        out = pc.cast(arr, target).fill_null(0).to_numpy(zero_copy_only=False)
        return out.astype(">f4" if kind == "float4" else ">f8")
    if kind == "date":
        if not pa.types.is_date32(t):
            arr = pc.cast(arr, pa.date32())
        days = arr.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        return (days.astype(np.int64) - _PG_EPOCH_DAYS).astype(">i4")
    # timestamps: microseconds since 2000-01-01 (UTC for timestamptz; the
    # stored wall clock for timestamp).
    if pa.types.is_date(t):
        arr = pc.cast(arr, pa.timestamp("us"))
    elif pa.types.is_timestamp(t):
        if kind == "timestamp" and t.tz is not None:
            arr = pc.local_timestamp(arr)
        arr = pc.cast(arr, pa.timestamp("us", tz=None if kind == "timestamp" else t.tz))
    else:
        arr = pc.cast(arr, pa.timestamp("us"))
    micros = arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    return (micros - _PG_EPOCH_US).astype(">i8")


def _variable_cell(arr: pa.Array, kind: str, valid: np.ndarray) -> _Cell:
    n = len(arr)
    if kind == "text":
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = pc.cast(arr, pa.string())
        arr = pc.cast(arr, pa.large_string())
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        raw = arr.buffers()[2]
        flat = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.empty(0, np.uint8)
        lens = np.diff(offsets)
        starts = offsets[:-1]
    else:
        values = arr.to_pylist()
        encoded = [_encode_one(v, kind) if v is not None else b"" for v in values]
        lens = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)
        flat = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    lens = np.where(valid, lens, 0)
    width = int(lens.max()) if n else 0
    data = np.zeros((n, width), dtype=np.uint8)
    total = int(lens.sum())
    if total:
        rows = np.repeat(np.arange(n), lens)
        within = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        data[rows, within] = flat[np.repeat(starts, lens) + within]
    keep = np.arange(width)[None, :] < lens[:, None]
    prefix = np.where(valid, lens, -1).astype(">i4")
    return _Cell(4 + width, prefix, data, keep)


def _encode_objects(values: list[Any], oid: int) -> list[bytes]:
    if oid not in TYPES:
        raise UnsupportedType(f"type oid {oid}")
    kind, _ = TYPES[oid]
    if kind in ("text", "numeric", "uuid"):
        return [_encode_one(v, kind) for v in values]
    arr = pa.array(values)
    cell = _array_cell(arr, oid)
    assert cell.data is not None
    return [bytes(row) for row in cell.data]


def _encode_one(value: Any, kind: str) -> bytes:
    if kind == "text":
        return str(value).encode("utf-8")
    if kind == "uuid":
        return (value if isinstance(value, uuid.UUID) else _as_uuid(value)).bytes
    return numeric_bytes(value)


def _as_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return uuid.UUID(str(value))


_NUMERIC_SPECIAL = {"nan": 0xC000, "infinity": 0xD000, "inf": 0xD000, "-infinity": 0xF000, "-inf": 0xF000}


def numeric_bytes(value: Any) -> bytes:
    """A value in PostgreSQL's binary ``numeric`` form (base-10000 digits)."""
    if isinstance(value, float | np.floating):
        value = repr(float(value))
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    text = text.strip()
    special = _NUMERIC_SPECIAL.get(text.lower())
    if special is not None:
        return struct.pack(">hhHH", 0, 0, special, 0)
    if "e" in text.lower():
        text = format(Decimal(text), "f")
    sign = 0
    if text.startswith("-"):
        sign, text = 0x4000, text[1:]
    elif text.startswith("+"):
        text = text[1:]
    whole, _, frac = text.partition(".")
    dscale = len(frac)
    whole = whole.lstrip("0")
    whole = "0" * (-len(whole) % 4) + whole
    frac_padded = frac + "0" * (-len(frac) % 4)
    groups = [int(whole[i : i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(frac_padded[i : i + 4]) for i in range(0, len(frac_padded), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        return struct.pack(">hhHH", 0, 0, 0, dscale)
    return struct.pack(f">hhHH{len(groups)}H", len(groups), weight, sign, dscale, *groups)
