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
  ``executemany`` of Python tuples; PostgreSQL ``COPY`` of CSV bytes encoded
  beforehand (only the transfer and the server's work are timed).

Prints one line of seconds as JSON. SQLite has one writer at a time:
``write`` alone bounds the fleet's wall time from below whatever overlaps
it, and import + predict + write is what one process takes doing them one
after the other. PostgreSQL's server works beside the client: there the
bound is the larger of import + predict and write.
"""

from __future__ import annotations

import io
import json
import sys
import time
from datetime import UTC, date, datetime

T0 = time.perf_counter()
import joblib  # noqa: E402
import pandas as pd  # noqa: E402
import sklearn.compose  # noqa: E402, F401
import sklearn.linear_model  # noqa: E402, F401
import sklearn.pipeline  # noqa: E402, F401
import sqlalchemy as sa  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - T0

from threadpoolctl import threadpool_limits  # noqa: E402

from batch_scorer.storage.schema import output_table  # noqa: E402
from batch_scorer.storage.sinks.output import KIND_TYPES  # noqa: E402

MODELS = [f"m{i}" for i in range(10)]
COUNTRIES = [f"C{i:02d}" for i in range(20)]
OUT = "floor_out"


def predict(engine: sa.Engine, folder: str, table: str) -> tuple[float, list[tuple]]:
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {table}"), conn)  # noqa: S608
    by_country = dict(tuple(frame.groupby("country")))
    models = {(m, c): joblib.load(f"{folder}/{m}_{c}.joblib") for m in MODELS for c in COUNTRIES}
    start = time.perf_counter()
    scored = []
    for (m, c), model in models.items():
        rows = by_country[c]
        proba = model.predict_proba(rows[list(model.feature_names_in_)])
        scored.append((f"{m}.{c}", rows["entity_id"].to_numpy(), c, proba))
    seconds = time.perf_counter() - start
    as_of, now = date(2026, 3, 31), datetime.now(UTC)
    if engine.dialect.name == "sqlite":  # the text SQLAlchemy's SQLite dialect sends for them
        as_of, now = as_of.isoformat(), now.isoformat(sep=" ")  # type: ignore[assignment]
    tuples = [(job, int(key), as_of, "floor", 1, now, int(p.argmax()), float(p[1]), country)
              for job, keys, country, proba in scored for key, p in zip(keys, proba, strict=True)]
    return seconds, tuples


def write(engine: sa.Engine, tuples: list[tuple]) -> float:
    pg = engine.dialect.name == "postgresql"
    key = [("entity_id", sa.BigInteger())]
    table = output_table(OUT, key, [("country", sa.Text())], KIND_TYPES["integer"])
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
    columns = ["job", "entity_id", "as_of", "model_version", "run_id", "scored_at", "prediction", "score",
               "country"]
    placeholders = ", ".join("?" for _ in columns)
    if pg:  # encoded before the clock starts: only the server's part is timed
        buffer = io.StringIO()
        pd.DataFrame(tuples, columns=columns).to_csv(buffer, index=False, header=False)
        text = buffer.getvalue().encode()
    start = time.perf_counter()
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        if pg:
            with raw.cursor().copy(f"COPY {OUT} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)") as copy:
                for i in range(0, len(text), 1 << 20):
                    copy.write(text[i : i + (1 << 20)])
        else:
            raw.executemany(f"INSERT INTO {OUT} ({', '.join(columns)}) VALUES ({placeholders})", tuples)  # noqa: S608
    seconds = time.perf_counter() - start
    with engine.begin() as conn:
        table.drop(conn)
    return seconds


def main(url: str, folder: str, table: str) -> None:
    threadpool_limits(1)
    engine = sa.create_engine(url)
    predict_seconds, tuples = predict(engine, folder, table)
    write_seconds = write(engine, tuples)
    engine.dispose()
    print(json.dumps({"import": IMPORT_SECONDS, "predict": predict_seconds, "write": write_seconds,
                      "rows": len(tuples)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
