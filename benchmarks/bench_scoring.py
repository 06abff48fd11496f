"""Benchmark for issue 4: ``batch-scorer run`` against the pandas script users write.

Builds the workload (20 numeric + 2 categorical features with NULLs, a "light"
and a "heavy" model; see ``workload.py``) inside PostgreSQL and a SQLite file,
then runs the naive script (``naive.py``) and ``batch-scorer run`` alternately,
each in its own process, and prints wall time, rows/s, peak RSS (the child's
``ru_maxrss``) and the speed ratio of the medians. Before each measured run,
untimed: ``CHECKPOINT`` and a wait for autovacuum, so that no run pays for the
background work the previous one caused. Wall time is the whole
process: interpreter start, imports, model load, lock, ledger, publish.

Examples::

    python benchmarks/bench_scoring.py                      # 1M rows, light+heavy, SQLite, 3 reps
    python benchmarks/bench_scoring.py --rows 200000 --reps 2 --sqlite-rows 50000
    python benchmarks/bench_scoring.py --history            # + run into a table holding 10 earlier as_ofs
    python benchmarks/bench_scoring.py --memory-rows 5000000  # + peak RSS of a 5M-row run
    python benchmarks/bench_scoring.py --only history,memory --reps 2
    python benchmarks/bench_scoring.py --only shadow       # a run with one challenger vs without
    python benchmarks/bench_scoring.py --only monitor --reps 5  # drift monitoring off vs on

PostgreSQL URL: ``--url`` or ``$BATCH_SCORER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Everything lives in schema
``bs_bench`` (created if missing; tables are reused across invocations when
their row count matches, ``--rebuild`` forces a rebuild).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload  # noqa: E402

from batch_scorer.storage.db import create_engine  # noqa: E402

HERE = Path(__file__).resolve().parent
SCHEMA = "bs_bench"
AS_OF = date(2026, 3, 31)
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class Sample:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0  # user + system time of the child: less sensitive to a loaded machine


@dataclass
class Case:
    label: str
    rows: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, who: str, s: Sample) -> None:
        self.samples.setdefault(who, []).append(s)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> Sample:
    """Run ``cmd`` as a child; wall seconds and the child's own peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stdout.write(output.decode(errors="replace"))
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return Sample(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


def schema_url(base: str) -> str:
    url = sa.engine.make_url(base)
    return url.update_query_dict({"options": f"-csearch_path={SCHEMA}"}).render_as_string(
        hide_password=False
    )


def row_count(engine: sa.Engine, table: str) -> int:
    insp = sa.inspect(engine)
    schema = SCHEMA if engine.dialect.name == "postgresql" else None
    if not insp.has_table(table, schema=schema):
        return -1
    name = f"{schema}.{table}" if schema else table
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one())


def ensure_pg_table(engine: sa.Engine, rows: int, rebuild: bool) -> str:
    table = f"features_{rows}"
    if rebuild or row_count(engine, table) != rows:
        print(f"building {SCHEMA}.{table} ({rows:,} rows) in PostgreSQL ...", flush=True)
        t = time.perf_counter()
        workload.build_postgres(engine, f"{SCHEMA}.{table}", rows)
        print(f"  built in {time.perf_counter() - t:.1f}s", flush=True)
    return table


def truncate(engine: sa.Engine, *tables: str) -> None:
    insp = sa.inspect(engine)
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for t in tables:
            if insp.has_table(t, schema=SCHEMA if pg else None):
                name = f"{SCHEMA}.{t}" if pg else t
                conn.exec_driver_sql(f"DELETE FROM {name}" if not pg else f"TRUNCATE {name}")


def settle(engine: sa.Engine) -> None:
    """Untimed, before every measured run: flush the previous run's WAL and wait for
    autovacuum, so no run pays for the background work the one before it caused. On a
    server with autovacuum off (this machine's), vacuum the benchmark schema's tables
    instead: the runs before would otherwise leave each one more dead rows to step over
    (200 jobs replacing their rows 10 times left 180,000 in the output table)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.exec_driver_sql("SHOW autovacuum").scalar_one() == "off":
            tables = conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = %(s)s", {"s": SCHEMA}).scalars().all()
            for table in tables:
                conn.exec_driver_sql(f'VACUUM ANALYZE {SCHEMA}."{table}"')
        conn.exec_driver_sql("CHECKPOINT")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).scalar_one()
            if not busy:
                break
            time.sleep(0.5)


def vacuum(engine: sa.Engine, table: str) -> None:
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"VACUUM ANALYZE {SCHEMA}.{table}")


def write_config(folder: Path, url: str, jobs: dict[str, dict[str, object]], chunk: int | None) -> Path:
    path = folder / "config.yaml"
    defaults = {"chunk_size": chunk} if chunk else {}
    data = {"database": {"url": url}, "timezone": "UTC", "defaults": defaults, "jobs": jobs}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def job(model: Path, table: str, out: str) -> dict[str, object]:
    return {
        "model": {"path": str(model)},
        "source": {"table": table, "key": ["entity_id"]},
        "output": {"table": out},
    }


def tool_cmd(config: Path, name: str, as_of: date = AS_OF) -> list[str]:
    # `python -m batch_scorer` is the command's own entry point; an installed
    # `batch-scorer` script may be a stale one (pointing at an older layout).
    return [sys.executable, "-m", "batch_scorer", "--config", str(config), "run", name, "--as-of", as_of.isoformat()]


def naive_cmd(url: str, model: Path, table: str, out: str) -> list[str]:
    return [sys.executable, str(HERE / "naive.py"), url, str(model), table, out, AS_OF.isoformat()]


def report(case: Case, baseline: str = "naive pandas", subject: str = "batch-scorer") -> None:
    print(f"\n== {case.label}: {case.rows:,} rows ==")
    print(f"{'approach':<28} {'runs (s)':<28} {'median s':>9} {'rows/s':>10} {'peak RSS MB':>12}")
    medians = {}
    for who, samples in case.samples.items():
        secs = [s.seconds for s in samples]
        med = statistics.median(secs)
        medians[who] = med
        rss = max(s.peak_rss_mb for s in samples)
        runs = " ".join(f"{s:.2f}" for s in secs)
        print(f"{who:<28} {runs:<28} {med:>9.2f} {case.rows / med:>10,.0f} {rss:>12,.0f}")
    if baseline in medians and subject in medians:
        print(f"ratio {subject} / {baseline} (median rows/s): {medians[baseline] / medians[subject]:.1f}x")
    sys.stdout.flush()


def bench_postgres(args: argparse.Namespace, work: Path, models: dict[str, Path]) -> None:
    base = args.url
    url = schema_url(base)
    engine = create_engine(url)
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    jobs = {f"{m}": job(models[m], table, f"pred_{m}") for m in args.models}
    config = write_config(work, url, jobs, args.chunk_size)
    for m in args.models:
        case = Case(f"PostgreSQL, {m} model", args.rows)
        for rep in range(args.reps):
            truncate(engine, f"naive_{m}")
            settle(engine)
            case.add("naive pandas", measure(naive_cmd(url, models[m], table, f"naive_{m}")))
            truncate(engine, f"pred_{m}")
            settle(engine)
            case.add("batch-scorer", measure(tool_cmd(config, m)))
            print(f"  {m} rep {rep + 1}: naive {case.samples['naive pandas'][-1].seconds:.2f}s, "
                  f"batch-scorer {case.samples['batch-scorer'][-1].seconds:.2f}s", flush=True)
        report(case)
    engine.dispose()


def bench_history(args: argparse.Namespace, work: Path, models: dict[str, Path]) -> None:
    """A run into a table that already holds 10 earlier as_of dates vs into an empty one."""
    url = schema_url(args.url)
    engine = create_engine(url)
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    jobs = {
        "empty": job(models["light"], table, "pred_empty"),
        "history": job(models["light"], table, "pred_history"),
    }
    config = write_config(work, url, jobs, args.chunk_size)
    # Create both tables (and the view) through the tool, then fill the history.
    truncate(engine, "pred_empty", "pred_history")
    measure(tool_cmd(config, "history", AS_OF - timedelta(days=100)))
    with engine.begin() as conn:
        have = conn.execute(sa.text(
            f"SELECT count(DISTINCT as_of) FROM {SCHEMA}.pred_history WHERE as_of < :d"), {"d": AS_OF}
        ).scalar_one()
    if have != 10:
        print("filling pred_history with 10 earlier as_of dates ...", flush=True)
        t = time.perf_counter()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {SCHEMA}.pred_history")
            for k in range(1, 11):
                conn.execute(
                    sa.text(
                        f"INSERT INTO {SCHEMA}.pred_history (job, entity_id, as_of, model_version, run_id, "
                        f"scored_at, prediction, score) SELECT 'history', entity_id, :d, 'old', :r, now(), "
                        f"1, 0.5 FROM {SCHEMA}.{table}"
                    ),
                    # Each as_of its own run, as real runs write (run_ids the ledger never gives).
                    {"d": AS_OF - timedelta(days=k), "r": 1_000_000_000 + k},
                )
        print(f"  filled in {time.perf_counter() - t:.1f}s", flush=True)
    vacuum(engine, "pred_history")
    case = Case("PostgreSQL, light model, into an empty table vs one holding 10 earlier as_ofs", args.rows)
    for _ in range(args.reps):
        truncate(engine, "pred_empty")
        settle(engine)
        case.add("into empty table", measure(tool_cmd(config, "empty")))
        settle(engine)
        case.add("into 10-as_of table", measure(tool_cmd(config, "history")))
        with engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {SCHEMA}.pred_history WHERE as_of = :d"), {"d": AS_OF})
        vacuum(engine, "pred_history")
    report(case, "into empty table", "into 10-as_of table")
    e = statistics.median(s.seconds for s in case.samples["into empty table"])
    h = statistics.median(s.seconds for s in case.samples["into 10-as_of table"])
    print(f"10-as_of table costs {100 * (h / e - 1):+.1f}% over the empty one (median wall time)")
    engine.dispose()


def bench_memory(args: argparse.Namespace, work: Path, models: dict[str, Path]) -> None:
    """Peak RSS of batch-scorer at --rows and at --memory-rows."""
    url = schema_url(args.url)
    engine = create_engine(url)
    small = ensure_pg_table(engine, args.rows, args.rebuild)
    big = ensure_pg_table(engine, args.memory_rows, args.rebuild)
    jobs = {
        "mem_small": job(models["light"], small, "pred_mem_small"),
        "mem_big": job(models["light"], big, "pred_mem_big"),
    }
    config = write_config(work, url, jobs, args.chunk_size)
    results = {}
    for name, rows in (("mem_small", args.rows), ("mem_big", args.memory_rows)):
        case = Case(f"PostgreSQL, light model, memory at {rows:,} rows", rows)
        for _ in range(max(1, args.reps - 1)):
            truncate(engine, f"pred_{name}")
            settle(engine)
            case.add("batch-scorer", measure(tool_cmd(config, name)))
        report(case)
        results[rows] = max(s.peak_rss_mb for s in case.samples["batch-scorer"])
        truncate(engine, f"pred_{name}")
    a, b = results[args.rows], results[args.memory_rows]
    print(f"peak RSS: {a:,.0f} MB at {args.rows:,} rows, {b:,.0f} MB at {args.memory_rows:,} rows "
          f"({100 * (b / a - 1):+.1f}%)")
    engine.dispose()


def bench_shadow(args: argparse.Namespace, work: Path, models: dict[str, Path]) -> None:
    """A registry job with one challenger (scored in shadow, same read) vs the same job without.

    Both score the registered light model as champion; the challenger is a second light
    model (trained on another sample). Each run is its own process, alternated.
    """
    from batch_scorer import api

    url = schema_url(args.url)
    engine = create_engine(url)
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    challenger = work / "light_challenger.joblib"
    if args.rebuild or not challenger.exists():
        frame = workload.training_frame(engine, f"{SCHEMA}.{table}", n=10_000)
        workload.save(workload.train("light", frame), challenger)
    source = {"table": table, "key": ["entity_id"]}
    jobs: dict[str, dict[str, object]] = {
        "solo": {"model": {"registry": "bench_light"}, "source": source, "output": {"table": "pred_solo"}},
        "shadowed": {"model": {"registry": "bench_light"}, "challengers": ["challenger"], "source": source,
                     "output": {"table": "pred_shadowed"}},
    }
    config = write_config(work, url, jobs, args.chunk_size)
    api.register_model(config, "bench_light", models["light"], alias="champion", note="benchmark champion")
    api.register_model(config, "bench_light", challenger, alias="challenger", note="benchmark challenger")
    case = Case("PostgreSQL, light registry model, without vs with one challenger", args.rows)

    def cmd(name: str) -> list[str]:
        # This checkout's code, whatever `batch-scorer` on PATH was installed from.
        return [sys.executable, "-m", "batch_scorer", *tool_cmd(config, name)[1:]]

    for rep in range(args.reps):
        truncate(engine, "pred_solo")
        settle(engine)
        case.add("no challenger", measure(cmd("solo")))
        truncate(engine, "pred_shadowed", "pred_shadowed_shadow")
        settle(engine)
        case.add("one challenger", measure(cmd("shadowed")))
        print(f"  rep {rep + 1}: no challenger {case.samples['no challenger'][-1].seconds:.2f}s, "
              f"one challenger {case.samples['one challenger'][-1].seconds:.2f}s, "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
    report(case, "no challenger", "one challenger")
    solo = statistics.median(s.seconds for s in case.samples["no challenger"])
    shadowed = statistics.median(s.seconds for s in case.samples["one challenger"])
    print(f"one challenger costs {shadowed / solo:.2f}x the run without (median wall time; budget 1.6x)")
    engine.dispose()


def bench_monitor(args: argparse.Namespace, work: Path, models: dict[str, Path]) -> None:
    """The light model's run with drift monitoring off, on (a reference exists: the steady
    state) and on for a model version's first run (no reference: it sketches one),
    alternating, each in its own process: wall time, peak RSS and the ratios."""
    url = schema_url(args.url)
    engine = create_engine(url)
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    jobs = {
        "monitor_off": {**job(models["light"], table, "pred_monitor_off"), "monitor": {"enabled": False}},
        "monitor_on": job(models["light"], table, "pred_monitor_on"),
        "monitor_first": job(models["light"], table, "pred_monitor_first"),
    }
    config = write_config(work, url, jobs, args.chunk_size)
    # Untimed: the tables, and monitor_on's reference (a run of an earlier as_of, so each
    # timed run also compares with a previous run).
    for name in jobs:
        measure(tool_cmd(config, name, AS_OF - timedelta(days=1)))
    case = Case("PostgreSQL, light model, drift monitoring off / on / first run (sketch)", args.rows)
    for rep in range(args.reps):
        for name, label in (("monitor_off", "monitoring off"), ("monitor_on", "monitoring on"),
                            ("monitor_first", "on, first run (sketch)")):
            if name == "monitor_first":  # no reference: this run sketches one
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"DELETE FROM {SCHEMA}.feature_profiles WHERE job = 'monitor_first'")
            settle(engine)
            case.add(label, measure(tool_cmd(config, name)))
        print(f"  rep {rep + 1}: " + ", ".join(f"{w} {v[-1].seconds:.2f}s ({v[-1].cpu_seconds:.2f}s CPU)"
                                           for w, v in case.samples.items()) + f", load {os.getloadavg()[0]:.1f}",
              flush=True)
    report(case, "monitoring off", "monitoring on")
    med = {w: statistics.median(x.seconds for x in v) for w, v in case.samples.items()}
    cpu = {w: statistics.median(x.cpu_seconds for x in v) for w, v in case.samples.items()}
    rss = {w: max(x.peak_rss_mb for x in v) for w, v in case.samples.items()}
    off = "monitoring off"
    print(f"{off}: median {med[off]:.2f}s wall, {cpu[off]:.2f}s CPU, peak RSS {rss[off]:.0f} MB")
    for label in ("monitoring on", "on, first run (sketch)"):
        print(f"{label}: median {med[label]:.2f}s wall ({100 * (med[label] / med[off] - 1):+.1f}%), "
              f"{cpu[label]:.2f}s CPU ({100 * (cpu[label] / cpu[off] - 1):+.1f}%), peak RSS {rss[label]:.0f} MB "
              f"({rss[label] - rss[off]:+.0f} MB) against monitoring off")
    engine.dispose()


def bench_sqlite(args: argparse.Namespace, work: Path, models: dict[str, Path]) -> None:
    db = work / "bench.db"
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    table = f"features_{args.sqlite_rows}"
    if args.rebuild or row_count(engine, table) != args.sqlite_rows:
        print(f"building {table} ({args.sqlite_rows:,} rows) in {db} ...", flush=True)
        workload.build_sqlite(engine, table, args.sqlite_rows)
    config = write_config(work, url, {"light": job(models["light"], table, "pred_light")}, args.chunk_size)
    case = Case("SQLite file, light model", args.sqlite_rows)
    for _ in range(args.reps):
        truncate(engine, "naive_light")
        case.add("naive pandas", measure(naive_cmd(url, models["light"], table, "naive_light")))
        truncate(engine, "pred_light")
        case.add("batch-scorer", measure(tool_cmd(config, "light")))
    report(case)
    engine.dispose()


def train_models(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    url = schema_url(args.url)
    engine = create_engine(url)
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    frame = workload.training_frame(engine, f"{SCHEMA}.{table}")
    engine.dispose()
    out = {}
    for kind in ("light", "heavy"):
        path = work / f"{kind}.joblib"
        if args.rebuild or not path.exists():
            workload.save(workload.train(kind, frame), path)
        out[kind] = path
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("BATCH_SCORER_TEST_POSTGRES_URL", DEFAULT_URL))
    p.add_argument("--rows", type=int, default=1_000_000, help="PostgreSQL rows (default 1,000,000)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (default 3)")
    p.add_argument("--models", default="light,heavy", help="comma list of light,heavy")
    p.add_argument("--sqlite-rows", type=int, default=200_000, help="SQLite rows; 0 skips SQLite")
    p.add_argument("--history", action="store_true", help="also: run into a table with 10 earlier as_ofs")
    p.add_argument("--memory-rows", type=int, default=0, help="also: peak RSS at this many rows (e.g. 5000000)")
    p.add_argument("--shadow", action="store_true", help="also: a registry run with one challenger vs without")
    p.add_argument("--monitor", action="store_true", help="also: the light run with drift monitoring off vs on")
    p.add_argument("--only", default="",
                   help="comma list of postgres,sqlite,history,memory,shadow,monitor to run only those")
    p.add_argument("--chunk-size", type=int, default=None, help="default: the tool's own")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bs_bench")
    p.add_argument("--rebuild", action="store_true", help="rebuild tables and models")
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    only = {s for s in args.only.split(",") if s}
    args.workdir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(args.url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    engine.dispose()
    print(f"batch-scorer benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"PostgreSQL {sa.engine.make_url(args.url).render_as_string(hide_password=True)}", flush=True)
    models = train_models(args, args.workdir)
    if not only or "postgres" in only:
        bench_postgres(args, args.workdir, models)
    if (args.history and not only) or "history" in only:
        bench_history(args, args.workdir, models)
    if (args.memory_rows and not only) or "memory" in only:
        if not args.memory_rows:
            args.memory_rows = 5_000_000
        bench_memory(args, args.workdir, models)
    if (args.shadow and not only) or "shadow" in only:
        bench_shadow(args, args.workdir, models)
    if (args.monitor and not only) or "monitor" in only:
        bench_monitor(args, args.workdir, models)
    if (args.sqlite_rows and not only) or "sqlite" in only:
        bench_sqlite(args, args.workdir, models)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
