"""The floor of the fleet benchmark: the work no scorer of that fleet can skip, timed alone.

    python benchmarks/fleet_floor.py URL MODEL_FOLDER TABLE

One Python process, one model thread, nothing checked, no lock, ledger or drift:

* ``import``: pandas, SQLAlchemy, joblib and the models' scikit-learn modules
  (what the naive loop imports too);
* ``predict``: the 200 models' ``predict_proba`` on their own country's rows,
  the rows already in memory (read once, not timed);
* ``write``: the 2,000,000 output rows, already built (not timed), into a
  table defined like a job's output (batch-scorer's own ``output_table``: its
  unique key index and its run_id index), in one transaction: SQLite
  ``executemany`` of Python tuples; PostgreSQL binary ``COPY`` as a run writes,
  encoded beforehand by batch-scorer's own encoder (only the transfer and the
  server's work are timed).

Prints one line of seconds as JSON. SQLite has one writer at a time:
``write`` alone bounds the fleet's wall time from below whatever overlaps
it, and import + predict + write is what one process takes doing them one
after the other. PostgreSQL's server works beside the client: there the
bound is the larger of import + predict and write.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, date, datetime

T0 = time.perf_counter()
import joblib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import sklearn.compose  # noqa: E402, F401
import sklearn.linear_model  # noqa: E402, F401
import sklearn.pipeline  # noqa: E402, F401
import sqlalchemy as sa  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - T0

from threadpoolctl import threadpool_limits  # noqa: E402

from batch_scorer.storage.schema import output_table  # noqa: E402
from batch_scorer.storage.sinks import pgcopy  # noqa: E402
from batch_scorer.storage.sinks.output import KIND_TYPES, OutputSpec  # noqa: E402
from batch_scorer.storage.sinks.postgres_copy import CopyEncoder, column_oids  # noqa: E402

MODELS = [f"m{i}" for i in range(10)]
COUNTRIES = [f"C{i:02d}" for i in range(20)]
OUT = "floor_out"


Scored = list[tuple[str, pd.Series, str, np.ndarray]]  # (job, keys, country, predict_proba)


def predict(engine: sa.Engine, folder: str, table: str) -> tuple[float, Scored]:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {table}"), conn)  # noqa: S608
    by_country = dict(tuple(frame.groupby("country")))
    models = {(m, c): joblib.load(f"{folder}/{m}_{c}.joblib") for m in MODELS for c in COUNTRIES}
    start = time.perf_counter()
    scored = []
    for (m, c), model in models.items():
        rows = by_country[c]
        proba = model.predict_proba(rows[list(model.feature_names_in_)])
        scored.append((f"{m}.{c}", rows["entity_id"].reset_index(drop=True), c, proba))
    return time.perf_counter() - start, scored


def _table() -> sa.Table:
    return output_table(OUT, [("entity_id", sa.BigInteger())], [("country", sa.Text())], KIND_TYPES["integer"])


def write_sqlite(engine: sa.Engine, scored: Scored) -> float:
    """``executemany`` of Python tuples, as SQLAlchemy's SQLite dialect sends them (dates as text)."""
    table = _table()
    as_of, now = date(2026, 3, 31).isoformat(), datetime.now(UTC).isoformat(sep=" ")
    tuples = [(job, int(key), as_of, "floor", 1, now, int(p.argmax()), float(p[1]), country)
              for job, keys, country, proba in scored for key, p in zip(keys, proba, strict=True)]
    names = [c.name for c in table.columns]
    sql = f"INSERT INTO {OUT} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"  # noqa: S608
    with engine.begin() as conn:
        table.create(conn)
    start = time.perf_counter()
    with engine.begin() as conn:
        conn.connection.driver_connection.executemany(sql, tuples)
    return time.perf_counter() - start


def write_postgres(engine: sa.Engine, scored: Scored) -> float:
    """Binary ``COPY``, as a run writes: each job's rows encoded by batch-scorer's own encoder
    beforehand (not timed), then the whole stream sent and committed (timed)."""
    table = _table()
    with engine.begin() as conn:
        table.create(conn)
        oids = column_oids(conn, table)
        body = []
        for job, keys, country, proba in scored:
            constants = {"job": job, "as_of": date(2026, 3, 31), "model_version": "floor", "run_id": 1,
                         "scored_at": datetime.now(UTC), "country": country}
            encoder = CopyEncoder(conn, OutputSpec(table, constants, ("entity_id",)), oids)
            body.append(encoder.encode(pd.DataFrame({"entity_id": keys, "prediction": proba.argmax(axis=1),
                                                     "score": proba[:, 1]})))
        copy_sql = encoder.copy_sql
    data = pgcopy.HEADER + b"".join(body) + pgcopy.TRAILER
    start = time.perf_counter()
    with engine.begin() as conn, conn.connection.driver_connection.cursor().copy(copy_sql) as copy:
        for i in range(0, len(data), 1 << 20):
            copy.write(data[i : i + (1 << 20)])
    return time.perf_counter() - start


def main(url: str, folder: str, table: str) -> None:
    threadpool_limits(1)
    engine = sa.create_engine(url)
    predict_seconds, scored = predict(engine, folder, table)
    with engine.begin() as conn:
        _table().drop(conn, checkfirst=True)
    try:
        write = write_postgres if engine.dialect.name == "postgresql" else write_sqlite
        write_seconds = write(engine, scored)
    finally:
        with engine.begin() as conn:
            _table().drop(conn, checkfirst=True)
        engine.dispose()
    print(json.dumps({"import": IMPORT_SECONDS, "predict": predict_seconds, "write": write_seconds,
                      "rows": sum(len(keys) for _, keys, _, _ in scored)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
