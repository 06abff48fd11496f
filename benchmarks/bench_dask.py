"""Benchmark: the Dask executor against the local one, on this machine.

The workload of ``workload.py`` (20 numeric + 2 categorical features with NULLs)
in PostgreSQL; the ``heavy`` model (HistGradientBoosting, 200 trees) by
default, ``--models light,heavy`` for both. A LocalCluster of ``--workers``
single-threaded worker processes is started once, outside the timings (as a
long-lived cluster would be), and each run reaches it through
``executor.address``. Local and Dask runs alternate, each ``batch-scorer run``
in its own process, after one untimed warm-up run of each; before every
measured run, untimed: ``CHECKPOINT`` and a wait for autovacuum.

Printed per model: wall time and rows/s of each executor; CPU seconds per row of
the local process, of the Dask workers (their processes' CPU time over the run)
and of the Dask driver; the throughput ratio (target: Dask >= 0.85x local) and
the workers' CPU per row against the local process's (target: within 10%).
Then the driver's write ceiling: output frames of 1M rows staged through the
run's own publication (binary COPY into an output table) and published, timed
alone: the rows/s no number of workers can take a run past.

Examples::

    python benchmarks/bench_dask.py                        # heavy, 1M rows, 2 workers, 3 reps
    python benchmarks/bench_dask.py --models light,heavy --reps 2
    python benchmarks/bench_dask.py --rows 200000 --reps 1 --no-ceiling

PostgreSQL URL: ``--url`` or ``$BATCH_SCORER_TEST_POSTGRES_URL``. Tables live in
schema ``bs_bench`` and are shared with ``bench_scoring.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scoring  # noqa: E402
from bench_scoring import AS_OF, DEFAULT_URL, SCHEMA, ensure_pg_table, settle, train_models, truncate  # noqa: E402

from batch_scorer.storage.db import create_engine  # noqa: E402
from batch_scorer.storage.sinks.output import OutputSpec, define_output, prepare_output_table  # noqa: E402
from batch_scorer.storage.sinks.publish import Publication  # noqa: E402


@dataclass
class Sample:
    seconds: float
    driver_cpu: float  # the batch-scorer process: user + system seconds
    worker_cpu: float = 0.0  # the Dask workers' processes over the run


@dataclass
class Case:
    model: str
    rows: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, who: str, sample: Sample) -> None:
        self.samples.setdefault(who, []).append(sample)

    def median(self, who: str, what: str) -> float:
        return statistics.median(getattr(s, what) for s in self.samples[who])

    def best(self, who: str) -> float:
        """The fastest run: on a shared machine, the one the other users slowed least."""
        return min(s.seconds for s in self.samples[who])


def run_cli(config: Path, name: str) -> Sample:
    """``batch-scorer run`` as a child process: wall seconds and its own CPU seconds."""
    cmd = [sys.executable, "-m", "batch_scorer.cli", "--config", str(config), "run", name,
           "--as-of", AS_OF.isoformat()]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.stdout.write(output.decode(errors="replace"))
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return Sample(seconds, usage.ru_utime + usage.ru_stime)


def _cpu_seconds() -> float:
    """On a worker: its process's CPU seconds so far."""
    times = os.times()
    return times.user + times.system


def worker_cpu(client: Any) -> float:
    return sum(client.run(_cpu_seconds).values())


def write_config(folder: Path, url: str, model: Path, table: str, out: str, executor: dict[str, Any],
                 chunk: int | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"database": {"url": url}, "timezone": "UTC", "defaults": {"chunk_size": chunk} if chunk else {},
            "executor": executor,
            "jobs": {"bench": {"model": {"path": str(model)}, "source": {"table": table, "key": ["entity_id"]},
                               "output": {"table": out}}}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bench_model(args: argparse.Namespace, client: Any, address: str, model: str, path: Path) -> Case:
    url = bench_scoring.schema_url(args.url)
    engine = create_engine(url)
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    local = write_config(args.workdir / f"local_{model}", url, path, table, f"pred_{model}_local",
                         {"kind": "local"}, args.chunk_size)
    dask = write_config(args.workdir / f"dask_{model}", url, path, table, f"pred_{model}_dask",
                        {"kind": "dask", "address": address, "partitions": args.partitions}, args.chunk_size)
    case = Case(model, args.rows)
    run_cli(local, "bench")  # warm-up: page cache, workers' imports and model cache
    run_cli(dask, "bench")
    for rep in range(args.reps):
        truncate(engine, f"pred_{model}_local")
        settle(engine)
        case.add("local", run_cli(local, "bench"))
        truncate(engine, f"pred_{model}_dask")
        settle(engine)
        before = worker_cpu(client)
        sample = run_cli(dask, "bench")
        sample.worker_cpu = worker_cpu(client) - before
        case.add("dask", sample)
        print(f"  {model} rep {rep + 1}: local {case.samples['local'][-1].seconds:.2f}s, "
              f"dask {sample.seconds:.2f}s (load average {os.getloadavg()[0]:.2f})", flush=True)
    engine.dispose()
    return case


def report(case: Case, workers: int) -> None:
    rows = case.rows
    print(f"\n== PostgreSQL, {case.model} model, {rows:,} rows, Dask: {workers} workers x 1 thread ==")
    print(f"{'executor':<8} {'runs (s)':<32} {'median s':>9} {'best s':>7} {'rows/s':>9} "
          f"{'driver CPU us/row':>18} {'worker CPU us/row':>18}")
    for who in ("local", "dask"):
        runs = " ".join(f"{s.seconds:.2f}" for s in case.samples[who])
        med = case.median(who, "seconds")
        print(f"{who:<8} {runs:<32} {med:>9.2f} {case.best(who):>7.2f} {rows / med:>9,.0f} "
              f"{1e6 * case.median(who, 'driver_cpu') / rows:>18.2f} "
              f"{1e6 * case.median(who, 'worker_cpu') / rows:>18.2f}")
    ratio = case.median("local", "seconds") / case.median("dask", "seconds")
    best = case.best("local") / case.best("dask")
    local_cpu = case.median("local", "driver_cpu")
    workers_cpu = case.median("dask", "worker_cpu")
    total = workers_cpu + case.median("dask", "driver_cpu")
    print(f"throughput dask / local: {ratio:.2f}x of the medians, {best:.2f}x of the best runs (target >= 0.85x)")
    print(f"CPU per row, dask workers / local process: {workers_cpu / local_cpu:.2f}x (target within 10%); "
          f"dask workers + driver / local: {total / local_cpu:.2f}x")
    print(f"rows/s per worker core (CPU): {rows / workers_cpu:,.0f}")
    sys.stdout.flush()


def write_ceiling(args: argparse.Namespace, model: str) -> None:
    """Stage the output frames of a finished run through a Publication and publish them:
    the driver's side of a run (binary COPY into the output table, then commit), alone."""
    url = bench_scoring.schema_url(args.url)
    engine = create_engine(url)
    source = f"{SCHEMA}.pred_{model}_dask"
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"SELECT entity_id, prediction, score FROM {source}"), conn)  # noqa: S608
    kind = "integer"
    wanted = define_output("write_ceiling", [("entity_id", sa.BigInteger())], [], kind)
    table = prepare_output_table(engine, wanted, kind, "ceiling", True, create=True).table
    truncate(engine, "write_ceiling")
    settle(engine)
    constants = {"job": "ceiling", "as_of": date(2000, 1, 1), "model_version": "ceiling", "run_id": 0,
                 "scored_at": pd.Timestamp.now(tz="UTC").to_pydatetime()}
    step = args.chunk_size or 50_000
    start = time.perf_counter()
    publication = Publication(engine, 0, "ceiling", constants["as_of"])
    stage = publication.stage(OutputSpec(table, constants, ("entity_id",)))
    for i in range(0, len(frame), step):
        stage.write(frame.iloc[i : i + step])
    publication.publish(lambda conn: None)
    seconds = time.perf_counter() - start
    print(f"\n== the driver's write ceiling: {len(frame):,} output rows staged (binary COPY) and published ==")
    print(f"{seconds:.2f}s, {len(frame) / seconds:,.0f} rows/s")
    truncate(engine, "write_ceiling")
    engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("BATCH_SCORER_TEST_POSTGRES_URL", DEFAULT_URL))
    p.add_argument("--rows", type=int, default=1_000_000, help="PostgreSQL rows (default 1,000,000)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (default 3)")
    p.add_argument("--models", default="heavy", help="comma list of light,heavy (default heavy)")
    p.add_argument("--workers", type=int, default=2, help="Dask worker processes, 1 thread each (default 2)")
    p.add_argument("--partitions", type=int, default=None, help="executor.partitions (default: the rule)")
    p.add_argument("--chunk-size", type=int, default=None, help="default: the tool's own")
    p.add_argument("--no-ceiling", action="store_true", help="skip the driver's write ceiling")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bs_bench")
    p.add_argument("--rebuild", action="store_true", help="rebuild tables and models")
    args = p.parse_args()
    models = [m for m in args.models.split(",") if m]
    args.workdir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(args.url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    engine.dispose()
    print(f"batch-scorer Dask benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    paths = train_models(args, args.workdir)

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    try:
        for model in models:
            report(bench_model(args, client, cluster.scheduler_address, model, paths[model]), args.workers)
    finally:
        client.close()
        cluster.close()
    if not args.no_ceiling:
        write_ceiling(args, models[-1])
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
