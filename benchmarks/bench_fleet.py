"""Fleet benchmark: many jobs in one process against the loop users write for them.

Four measurements, each alternating the approaches in one invocation:

* ``fleet``: 10 models x 20 countries = 200 jobs (a matrix per model, one model
  file per model and country) over 200,000 feature rows (10,000 per country):
  ``batch-scorer run --all`` against ``naive_loop.py`` (one Python process
  looping over the 200 pairs: ``read_sql`` with a WHERE on the country,
  ``predict_proba``, ``to_sql``). Wall time and peak RSS.
* ``fixed``: the fixed cost of a job: the same 200-job fleet over 100 rows per
  job against one job of 100 rows; (T200 - T1) / 199 per job, and the naive
  loop on the same rows.
* ``ten``: ten models on one 1,000,000-row source in one invocation against ten
  separate ``batch-scorer run`` invocations (one per model).
* ``parallel``: the 200-job fleet with --parallel 1, 2, 4, 10 (how the default
  of ``defaults.parallel_jobs`` was chosen).
* ``floor``: ``fleet_floor.py`` (importing, the 200 models' ``predict_proba`` and
  writing the 2,000,000 output rows into a table indexed like a job's output,
  nothing else) against the naive loop: how close to 10x any single process
  can come on this machine.

Examples::

    python benchmarks/bench_fleet.py                     # all, PostgreSQL and SQLite, 3 reps
    python benchmarks/bench_fleet.py --only fleet,fixed --reps 2 --databases postgresql

Uses schema ``bs_bench`` on ``--url`` / ``$BATCH_SCORER_TEST_POSTGRES_URL`` and a SQLite
file in ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402
from bench_scoring import SCHEMA, Case, Sample, measure, report, schema_url, settle  # noqa: E402

from batch_scorer.storage.db import create_engine  # noqa: E402

HERE = Path(__file__).resolve().parent
MODELS = [f"m{i}" for i in range(10)]
COUNTRIES = [f"C{i:02d}" for i in range(20)]
TOOL = [sys.executable, "-m", "batch_scorer.cli"]


def build_fleet_table(engine: sa.Engine, table: str, rows: int) -> None:
    """The workload's features plus a ``country`` column: ``rows / 20`` rows per country."""
    workload.build_postgres(engine, table, rows) if engine.dialect.name == "postgresql" else \
        workload.build_sqlite(engine, table, rows)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN country text")
        conn.exec_driver_sql(
            f"UPDATE {table} SET country = 'C' || substr('0' || ((entity_id - 1) % 20), -2, 2)"
            if engine.dialect.name == "sqlite" else
            f"UPDATE {table} SET country = 'C' || lpad(mod(entity_id - 1, 20)::text, 2, '0')")
        name = table.split(".")[-1]
        conn.exec_driver_sql(f"CREATE INDEX ix_{name}_country ON {table} (country)")
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {table}")


def ensure_table(engine: sa.Engine, table: str, rows: int) -> str:
    pg = engine.dialect.name == "postgresql"
    full = f"{SCHEMA}.{table}" if pg else table
    insp = sa.inspect(engine)
    if insp.has_table(table, schema=SCHEMA if pg else None):
        with engine.connect() as conn:
            have = conn.execute(sa.text(f"SELECT count(*) FROM {full}")).scalar_one()  # noqa: S608
        cols = {c["name"] for c in insp.get_columns(table, schema=SCHEMA if pg else None)}
        if have == rows and "country" in cols:
            return full
    print(f"building {full} ({rows:,} rows, 20 countries) ...", flush=True)
    build_fleet_table(engine, full, rows)
    return full


def train_fleet(engine: sa.Engine, table: str, folder: Path) -> dict[tuple[str, str], Path]:
    """One light model per model name and country, each fitted on its own sample."""
    frame = workload.training_frame(engine, table, 20_000)
    paths = {}
    for i, m in enumerate(MODELS):
        for j, c in enumerate(COUNTRIES):
            path = folder / "fleet_models" / f"{m}_{c}.joblib"
            if not path.exists():
                sample = frame.sample(2_000, random_state=i * 100 + j)
                workload.save(workload.train("light", sample), path)
            paths[(m, c)] = path
    return paths


def fleet_config(folder: Path, url: str, table: str, models: list[str] = MODELS,
                 countries: list[str] = COUNTRIES, parallel: int | None = None) -> Path:
    """The fleet's config; ``parallel`` None: the tool's default ``defaults.parallel_jobs``."""
    jobs = {
        m: {"matrix": {"country": countries},
            "model": {"path": str(folder / "fleet_models" / f"{m}_{{country}}.joblib")},
            "source": {"table": table, "key": ["entity_id"], "where": {"country": "{country}"}},
            "output": {"table": "fleet_out", "pass_through": ["country"]}}
        for m in models
    }
    data: dict = {"database": {"url": url}, "timezone": "UTC", "jobs": jobs}
    if parallel is not None:
        data["defaults"] = {"parallel_jobs": parallel}
    path = folder / f"fleet_{parallel or 'default'}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def clear(engine: sa.Engine, *tables: str) -> None:
    """Empty output tables between measured runs. The ledger and the drift profiles stay:
    each measured run is a night like any other, its jobs' drift references already made
    by :func:`warm_up` (a first night also sketches each reference). Deleting ledger rows
    here would make every run a first run (and, on a SQLite file made before run ids
    were AUTOINCREMENT, hand old ids to new runs)."""
    pg = engine.dialect.name == "postgresql"
    insp = sa.inspect(engine)
    with engine.begin() as conn:
        for t in tables:
            if insp.has_table(t, schema=SCHEMA if pg else None):
                conn.exec_driver_sql(f"TRUNCATE {SCHEMA}.{t}" if pg else f"DELETE FROM {t}")


def warm_up(cfg: Path) -> None:
    """One untimed run of a fleet config, so its jobs have their drift references."""
    subprocess.run([*TOOL, "--config", str(cfg), "-q", "run", "--all", "--as-of", "2026-03-30"],
                   check=False, capture_output=True)


def naive_cmd(url: str, folder: Path, table: str, out: str) -> list[str]:
    return [sys.executable, str(HERE / "naive_loop.py"), url, str(folder / "fleet_models"), table, out]


def bench_fleet(args: argparse.Namespace, url: str, engine: sa.Engine, label: str) -> None:
    table = ensure_table(engine, f"fleet_features_{args.fleet_rows}", args.fleet_rows)
    train_fleet(engine, table, args.workdir)
    cfg = fleet_config(args.workdir, url, table)
    warm_up(cfg)
    case = Case(f"{label}, fleet of 200 jobs (10 models x 20 countries)", args.fleet_rows)
    for _ in range(args.reps):
        clear(engine, "naive_fleet")
        settle(engine)
        case.add("naive loop", measure(naive_cmd(url, args.workdir, table, "naive_fleet")))
        clear(engine, "fleet_out")
        settle(engine)
        case.add("batch-scorer run --all", measure([*TOOL, "--config", str(cfg), "-q", "run", "--all",
                                                    "--as-of", "2026-03-31"]))
    report(case, "naive loop", "batch-scorer run --all")


def bench_fixed(args: argparse.Namespace, url: str, engine: sa.Engine, label: str) -> None:
    rows = 100 * len(COUNTRIES)  # 100 rows per country: each of the 200 jobs scores 100 rows
    table = ensure_table(engine, f"fleet_features_{rows}", rows)
    train_fleet(engine, table, args.workdir)
    many = fleet_config(args.workdir, url, table)
    one = fleet_config(args.workdir, url, table, models=["m0"], countries=["C00"], parallel=1)
    warm_up(many)
    case = Case(f"{label}, fixed cost: 200 jobs of 100 rows vs 1 job of 100 rows", 200 * 100)
    for _ in range(args.reps):
        clear(engine, "fleet_out", "naive_fleet")
        settle(engine)
        case.add("1 job", measure([*TOOL, "--config", str(one), "-q", "run", "--all", "--as-of", "2026-03-31"]))
        clear(engine, "fleet_out")
        settle(engine)
        case.add("200 jobs", measure([*TOOL, "--config", str(many), "-q", "run", "--all", "--as-of", "2026-03-31"]))
        case.add("naive loop", measure(naive_cmd(url, args.workdir, table, "naive_fleet")))
    report(case, "naive loop", "200 jobs")
    t1 = statistics.median(s.seconds for s in case.samples["1 job"])
    t200 = statistics.median(s.seconds for s in case.samples["200 jobs"])
    print(f"fixed cost per job: (T200 - T1) / 199 = {1000 * (t200 - t1) / 199:.1f} ms")


def bench_ten(args: argparse.Namespace, url: str, engine: sa.Engine, label: str) -> None:
    table = ensure_table(engine, f"fleet_features_{args.ten_rows}", args.ten_rows)
    train_fleet(engine, table, args.workdir)
    jobs = {m: {"model": {"path": str(args.workdir / "fleet_models" / f"{m}_C00.joblib")},
                "source": {"table": table, "key": ["entity_id"]},
                "output": {"table": f"ten_{m}"}} for m in MODELS}
    data = {"database": {"url": url}, "timezone": "UTC", "jobs": jobs}  # the default parallel_jobs
    cfg = args.workdir / "ten.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    case = Case(f"{label}, ten models on one source", args.ten_rows)
    for _ in range(args.reps):
        clear(engine, *(f"ten_{m}" for m in MODELS))
        settle(engine)
        each = [measure([*TOOL, "--config", str(cfg), "-q", "run", m, "--as-of", "2026-03-31"]) for m in MODELS]
        case.add("ten invocations", Sample(sum(s.seconds for s in each), max(s.peak_rss_mb for s in each)))
        clear(engine, *(f"ten_{m}" for m in MODELS))
        settle(engine)
        case.add("one invocation", measure([*TOOL, "--config", str(cfg), "-q", "run", "--all",
                                            "--as-of", "2026-03-31"]))
    report(case, "ten invocations", "one invocation")
    a = statistics.median(s.seconds for s in case.samples["one invocation"])
    b = statistics.median(s.seconds for s in case.samples["ten invocations"])
    print(f"one invocation / ten invocations: {a / b:.2f}x the wall time")


def bench_floor(args: argparse.Namespace, url: str, engine: sa.Engine, label: str) -> None:
    """The fleet's floor (fleet_floor.py: import, predict, write, nothing else) against the naive loop."""
    table = ensure_table(engine, f"fleet_features_{args.fleet_rows}", args.fleet_rows)
    train_fleet(engine, table, args.workdir)
    print(f"\n== {label}, floor of the fleet of 200 jobs ({args.fleet_rows:,} rows) ==")
    for _ in range(args.reps):
        clear(engine, "naive_fleet")
        settle(engine)
        naive = measure(naive_cmd(url, args.workdir, table, "naive_fleet"))
        settle(engine)
        out = subprocess.run([sys.executable, str(HERE / "fleet_floor.py"), url, str(args.workdir / "fleet_models"),
                              table], check=True, capture_output=True, text=True).stdout
        floor = json.loads(out.strip().splitlines()[-1])
        client = floor["import"] + floor["predict"]
        print(f"naive loop {naive.seconds:.2f} s: 10x needs at most {naive.seconds / 10:.2f} s")
        print(f"import {floor['import']:.2f} s, predict {floor['predict']:.2f} s, write {floor['write']:.2f} s "
              f"({floor['rows']:,} rows)")
        bounds = {"the larger of import + predict and write": max(client, floor["write"])}
        if label == "SQLite":  # one writer: the write alone; and the three one after the other
            bounds = {"write alone": floor["write"], "import + predict + write": client + floor["write"]}
        for how, seconds in bounds.items():
            print(f"floor ({how}): {seconds:.2f} s; the loop / the floor: {naive.seconds / seconds:.1f}x at most")


def bench_parallel(args: argparse.Namespace, url: str, engine: sa.Engine, label: str) -> None:
    table = ensure_table(engine, f"fleet_features_{args.fleet_rows}", args.fleet_rows)
    train_fleet(engine, table, args.workdir)
    case = Case(f"{label}, fleet of 200 jobs by --parallel", args.fleet_rows)
    for _ in range(args.reps):
        for n in (1, 2, 4, 10):
            cfg = fleet_config(args.workdir, url, table, parallel=n)
            clear(engine, "fleet_out")
            settle(engine)
            case.add(f"parallel {n}", measure([*TOOL, "--config", str(cfg), "-q", "run", "--all",
                                               "--as-of", "2026-03-31"]))
    report(case)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("BATCH_SCORER_TEST_POSTGRES_URL",
                                                   "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--fleet-rows", type=int, default=200_000)
    p.add_argument("--ten-rows", type=int, default=1_000_000)
    p.add_argument("--only", default="fleet,fixed,ten,parallel")
    p.add_argument("--databases", default="postgresql,sqlite")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bs_bench_fleet")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    print(f"batch-scorer fleet benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
          flush=True)
    for db in args.databases.split(","):
        if db == "postgresql":
            admin = create_engine(args.url)
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            admin.dispose()
            url, label = schema_url(args.url), "PostgreSQL"
        else:
            url, label = f"sqlite:///{args.workdir / 'fleet.db'}", "SQLite"
        engine = create_engine(url)
        for name, fn in (("fleet", bench_fleet), ("fixed", bench_fixed), ("ten", bench_ten),
                         ("parallel", bench_parallel), ("floor", bench_floor)):
            if name in only and not (name == "ten" and db == "sqlite" and args.ten_rows > 200_000):
                fn(args, url, engine, label)
        engine.dispose()
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
