"""How fast ``<output>_daily`` answers over a 1,000,000-row output on PostgreSQL.

A Power BI DirectQuery visual sends one query per visual; the daily view must
answer in well under a second. This fills an output table through real
``batch-scorer run`` processes (the light model of ``workload.py``; the rows
arrive by the tool's binary COPY), ``--days`` as_of dates of ``rows / days``
rows each, then times, median of ``--reps`` after one warm-up:

* ``SELECT * FROM predictions_daily`` (an Import refresh, or a table visual);
* the view filtered to one job and the latest as_of, plain and wrapped the
  way DirectQuery wraps it (``SELECT * FROM (view) AS "$Table" WHERE ...``,
  the date as a timestamp literal);

and prints the server's ``EXPLAIN ANALYZE`` execution time of each. With
``--index`` it repeats everything with a candidate ``(job, as_of)`` index on
the output table, so the index's query gain and its cost to the runs (COPY
plus index maintenance) can be compared.

Examples::

    python benchmarks/bench_daily_view.py                    # 1M rows: 10 days x 100k
    python benchmarks/bench_daily_view.py --days 1 --index   # 1M rows in one day, with/without index

PostgreSQL URL: ``--url`` or ``$BATCH_SCORER_TEST_POSTGRES_URL``. Everything
lives in schema ``bs_bench_daily`` (the feature table is reused when its row
count matches). The runs use this checkout's code (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workload  # noqa: E402
from bench_scoring import settle  # noqa: E402

from batch_scorer.storage.db import create_engine  # noqa: E402

SCHEMA = "bs_bench_daily"
LAST_DAY = date(2026, 3, 31)
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CANDIDATE_INDEX = "ix_bench_predictions_job_as_of"


def schema_url(base: str) -> str:
    url = sa.engine.make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={SCHEMA}"}).render_as_string(hide_password=False)


def ensure_features(engine: sa.Engine, rows: int) -> None:
    with engine.connect() as conn:
        have = conn.execute(sa.text(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:t)"), {"t": f"{SCHEMA}.features"}
        ).scalar()
    if have != rows:
        print(f"building {SCHEMA}.features ({rows:,} rows) ...", flush=True)
        workload.build_postgres(engine, f"{SCHEMA}.features", rows)


def write_config(folder: Path, url: str, model: Path) -> Path:
    # No as_of_column: every as_of scores the whole feature table (one day's rows).
    jobs = {"daily": {"model": {"path": str(model)},
                      "source": {"table": "features", "key": ["entity_id"]},
                      "output": {"table": "predictions"}}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": url}, "timezone": "UTC", "jobs": jobs}, sort_keys=False))
    return path


def cli(config: Path, *args: str) -> None:
    """Run ``batch-scorer`` from this checkout in its own process."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), BATCH_SCORER_PROGRESS_SECONDS="0")
    done = subprocess.run([sys.executable, "-m", "batch_scorer.cli", "--config", str(config), *args],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"batch-scorer {' '.join(args)} failed:\n{done.stderr}")


def run_seconds(engine: sa.Engine) -> list[float]:
    """Each run's own time from the ledger (no interpreter start): read, score, COPY, publish."""
    with engine.connect() as conn:
        return [float(s) for (s,) in conn.exec_driver_sql(
            "SELECT extract(epoch FROM finished_at - started_at) FROM scoring_runs ORDER BY run_id")]


def fill(engine: sa.Engine, config: Path, days: list[date], index: bool) -> list[float]:
    """A fresh output table (made by init-db), the candidate index if asked, one run per day;
    the runs' seconds."""
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS predictions CASCADE")
        conn.exec_driver_sql("DROP TABLE IF EXISTS scoring_runs CASCADE")
    cli(config, "init-db")
    if index:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE INDEX {CANDIDATE_INDEX} ON predictions (job, as_of)")
    for day in days:
        settle(engine)
        cli(config, "run", "daily", "--as-of", day.isoformat())
    seconds = run_seconds(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE predictions")
    settle(engine)
    return seconds


def queries(day: date) -> dict[str, str]:
    return {
        "whole view": "SELECT * FROM predictions_daily",
        "one job and day": f"SELECT * FROM predictions_daily WHERE job = 'daily' AND as_of = DATE '{day}'",
        "DirectQuery-wrapped": ('SELECT * FROM (SELECT * FROM predictions_daily) AS "$Table" '
                                f"WHERE \"job\" = 'daily' AND \"as_of\" = TIMESTAMP '{day} 00:00:00'"),
    }


def time_queries(engine: sa.Engine, day: date, reps: int) -> dict[str, tuple[float, float, int]]:
    """Per query: median client seconds, server execution ms (EXPLAIN ANALYZE), rows."""
    out = {}
    with engine.connect() as conn:
        for name, sql in queries(day).items():
            rows = len(conn.exec_driver_sql(sql).fetchall())  # warm-up
            samples = []
            for _ in range(reps):
                started = time.perf_counter()
                conn.exec_driver_sql(sql).fetchall()
                samples.append(time.perf_counter() - started)
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}").scalar_one()
            out[name] = (statistics.median(samples), float(plan[0]["Execution Time"]), rows)
    return out


def report(label: str, runs: list[float], timings: dict[str, tuple[float, float, int]]) -> None:
    print(f"\n{label}: runs {sum(runs):.2f}s in all, median {statistics.median(runs):.2f}s "
          f"({', '.join(f'{s:.2f}' for s in runs)})")
    for name, (wall, server_ms, rows) in timings.items():
        print(f"  {name:<22} {wall * 1000:8.1f} ms client, {server_ms:8.1f} ms server, {rows} rows")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("BATCH_SCORER_TEST_POSTGRES_URL", DEFAULT_URL))
    p.add_argument("--rows", type=int, default=1_000_000, help="output rows in all (default 1,000,000)")
    p.add_argument("--days", type=int, default=10, help="as_of dates they span (default 10)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of each query (default 5)")
    p.add_argument("--index", action="store_true", help="also measure with a (job, as_of) index")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bs_bench_daily")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    admin = create_engine(args.url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    admin.dispose()
    engine = create_engine(schema_url(args.url))
    ensure_features(engine, args.rows // args.days)
    model = args.workdir / "light.joblib"
    if not model.exists():
        workload.save(workload.train("light", workload.training_frame(engine, f"{SCHEMA}.features")), model)
    config = write_config(args.workdir, schema_url(args.url), model)
    days = [LAST_DAY - timedelta(days=k) for k in reversed(range(args.days))]
    print(f"daily-view benchmark: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"{args.rows:,} rows over {args.days} day(s)", flush=True)
    for index in (False, True) if args.index else (False,):
        runs = fill(engine, config, days, index)
        report("with a (job, as_of) index" if index else "the table as the tool makes it", runs,
               time_queries(engine, LAST_DAY, args.reps))
    engine.dispose()


if __name__ == "__main__":
    main()
