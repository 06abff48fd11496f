"""Two checkouts of batch-scorer on one workload, alternating: wall time and peak RSS.

How a change to the run path is measured before and after, in one session::

    git worktree add /tmp/before <commit>
    python benchmarks/bench_compare.py --before /tmp/before --rows 1000000 --reps 3

Each run is its own process (``python -m batch_scorer.cli ... run``) with the
checkout first on ``PYTHONPATH``; the workload, models and settling between runs
are bench_scoring.py's (PostgreSQL, schema ``bs_bench``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scoring import (  # noqa: E402
    AS_OF,
    DEFAULT_URL,
    SCHEMA,
    Case,
    ensure_pg_table,
    job,
    measure,
    report,
    schema_url,
    settle,
    train_models,
    truncate,
    write_config,
)

from batch_scorer.storage.db import create_engine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="the other checkout (a git worktree)")
    p.add_argument("--after", type=Path, default=ROOT, help="default: this checkout")
    p.add_argument("--url", default=os.environ.get("BATCH_SCORER_TEST_POSTGRES_URL", DEFAULT_URL))
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--model", default="light")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bs_bench")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--monitoring-off", action="store_true",
                   help="also time this checkout with monitor.enabled false (a run path change "
                        "measured apart from drift monitoring's own cost)")
    args = p.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    url = schema_url(args.url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    table = ensure_pg_table(engine, args.rows, args.rebuild)
    models = train_models(args, args.workdir)
    print(f"compare: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    case = Case(f"PostgreSQL, {args.model} model, before vs after", args.rows)
    arms = [("before", args.before, False), ("after", args.after, False)]
    if args.monitoring_off:
        arms.append(("after, monitoring off", args.after, True))
    for rep in range(args.reps):
        for label, tree, monitoring_off in arms:
            out = "cmp_" + label.replace(", monitoring off", "_nomon")
            folder = args.workdir / f"compare_{out}"
            folder.mkdir(exist_ok=True)
            spec = job(models[args.model], table, out)
            if monitoring_off:
                spec["monitor"] = {"enabled": False}
            config = write_config(folder, url, {out: spec}, args.chunk_size)
            truncate(engine, out)
            settle(engine)
            env = dict(os.environ, PYTHONPATH=str(tree))
            cmd = [sys.executable, "-m", "batch_scorer.cli", "--config", str(config), "-q", "run", out,
                   "--as-of", AS_OF.isoformat()]
            case.add(label, measure(cmd, env))
            print(f"  rep {rep + 1} {label}: {case.samples[label][-1].seconds:.2f}s "
                  f"{case.samples[label][-1].peak_rss_mb:.0f} MB", flush=True)
    report(case, "before", "after")
    b = statistics.median(s.seconds for s in case.samples["before"])
    a = statistics.median(s.seconds for s in case.samples["after"])
    rb = max(s.peak_rss_mb for s in case.samples["before"])
    ra = max(s.peak_rss_mb for s in case.samples["after"])
    print(f"after vs before: wall {100 * (a / b - 1):+.1f}%, peak RSS {100 * (ra / rb - 1):+.1f}%")
    if args.monitoring_off:
        label = "after, monitoring off"
        n = statistics.median(s.seconds for s in case.samples[label])
        rn = max(s.peak_rss_mb for s in case.samples[label])
        print(f"{label} vs before: wall {100 * (n / b - 1):+.1f}%, peak RSS {100 * (rn / rb - 1):+.1f}%")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    engine.dispose()


if __name__ == "__main__":
    main()
