"""Planning a fleet's drift lookups on a long ledger: the batched queries
(``storage/profiles.py: reference_and_previous``) against one query per job and
lookup (what planning did before they were batched).

200 jobs x 730 nights (two years of a 10 x 20 fleet), three profiled features
per run, on PostgreSQL (schema ``bs_ledger_scale`` on ``--url``, dropped and
made again) and SQLite (a file in ``$TMPDIR``). Prints the time of each, the
second of two tries.

    python benchmarks/bench_drift_lookups.py
    python benchmarks/bench_drift_lookups.py --nights 365
"""
import argparse
import os
import tempfile
import time
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa

from batch_scorer.storage import profiles
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--url", default=os.environ.get("BATCH_SCORER_TEST_POSTGRES_URL",
                                               "postgresql://postgres@127.0.0.1:5432/test"))
p.add_argument("--nights", type=int, default=730)
args = p.parse_args()
sqlite_file = os.path.join(tempfile.gettempdir(), "bs_ledger_scale.db")
for url in [args.url + "?options=-csearch_path%3Dbs_ledger_scale", f"sqlite:///{sqlite_file}"]:
    eng = create_engine(url)
    if url.startswith("postgresql"):
        with eng.begin() as c:
            c.exec_driver_sql("DROP SCHEMA IF EXISTS bs_ledger_scale CASCADE; CREATE SCHEMA bs_ledger_scale")
    elif os.path.exists(sqlite_file):
        os.remove(sqlite_file)
    create_tool_tables(eng)
    jobs = [f"m{i}.C{j:02d}" for i in range(10) for j in range(20)]
    d0, now = date(2024, 1, 1), datetime.now(UTC)
    t = profiles.scoring_runs
    with eng.begin() as c:
        c.execute(t.insert(), [dict(job=j, as_of=d0 + timedelta(days=k), trigger="schedule", status="succeeded",
                                    started_at=now, model_sha256="s" * 64, model_version="v1", host="h", pid=1)
                               for k in range(args.nights) for j in jobs])
        ids = [(r.run_id, r.job) for r in c.execute(sa.select(t.c.run_id, t.c.job))]
        c.execute(profiles.feature_profiles.insert(), [
            dict(profile_id=f"run:{rid}", run_id=rid, job=j, model_version="v1", feature=f"x{f}", kind="numeric",
                 bin=b, rows=1) for rid, j in ids for f in range(3) for b in (0, 1)])
    if url.startswith("postgresql"):
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("ANALYZE")
    as_of = d0 + timedelta(days=args.nights)
    r = t.c
    wants = [profiles.ProfileWant(j, "s" * 64, None, None, as_of) for j in jobs]
    for _ in range(2):  # the second try: warm caches, as a daemon's nightly batch has them
        with eng.connect() as c:
            t0 = time.perf_counter()
            got = profiles.reference_and_previous(c, wants)
            batched = time.perf_counter() - t0
    with eng.connect() as c:
        t1 = time.perf_counter()
        for j in jobs:  # what planning asked before, per job
            first = c.execute(sa.select(sa.func.min(r.run_id)).where(
                r.job == j, r.model_sha256 == "s" * 64, r.status == "succeeded", profiles._has_profile(r))).scalar()
            profiles.profile_rows(c, f"run:{first}")
            rid = c.execute(sa.select(r.run_id).where(
                r.job == j, r.status == "succeeded", r.replaced_by.is_(None), r.as_of < as_of, profiles._has_profile(r)
            ).order_by(r.as_of.desc(), r.run_id.desc()).limit(1)).scalar()
            profiles.profile_rows(c, f"run:{rid}")
        per_job = time.perf_counter() - t1
    assert all(ref is not None and prev is not None for ref, prev in got)
    print(f"{eng.dialect.name}: {len(jobs)} jobs x {args.nights} nights ({len(ids):,} runs): "
          f"batched {1000 * batched:.0f} ms, per job as before {1000 * per_job:.0f} ms")
