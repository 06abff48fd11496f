"""A fleet's drift lookups are batched: planning many jobs reads their references and
previous profiles, and their last published runs (the model-change line), in a few
queries (not five per job), and each job still compares with its own reference (its
first profiled run of its model) and its own previous run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from batch_scorer import api
from tests.helpers import AS_OF, features_frame, load_table, query, save_model, train, write_config

JOBS = [f"m{i}" for i in range(6)]
UNMONITORED = "plain"  # a job of the same batch with monitoring off: planned alongside, looked up for nothing
DAYS = [AS_OF - timedelta(days=2), AS_OF - timedelta(days=1), AS_OF]
# One marker per lookup query: first runs, previous runs, profile rows (storage/profiles.py),
# last published runs (storage/ledger.py).
MARKERS = ("min(r.run_id)", "order by r.as_of desc, r.run_id desc", "feature_profiles.profile_id in",
           "max(scoring_runs.run_id)")


def _fleet(tmp_path: Path, url: str) -> Path:
    load_table(url, features_frame(300, seed=3))
    for i, name in enumerate(JOBS):
        save_model(train("binary" if i % 2 else "forest", features_frame(200, seed=80 + i)),
                   tmp_path / "models" / f"{name}.joblib")
    jobs = {name: {"model": {"path": f"models/{name}.joblib"},
                   "source": {"table": "features", "key": ["entity_id"]},
                   "output": {"table": "fleet_out"}} for name in JOBS}
    jobs[UNMONITORED] = {**jobs[JOBS[0]], "monitor": {"enabled": False}}
    return write_config(tmp_path, url, jobs, defaults={"parallel_jobs": 3})


def _lookups_while(fn: object) -> list[str]:
    seen: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        text = " ".join(statement.lower().split())
        seen.extend(m for m in MARKERS if m in text)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        fn()  # type: ignore[operator]
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)
    return seen


def test_a_fleet_plans_its_drift_lookups_in_a_few_queries_each_job_its_own(tmp_path: Path, db_url: str) -> None:
    cfg = _fleet(tmp_path, db_url)
    for day in DAYS[:2]:
        assert api.run(cfg, all_jobs=True, as_of=day).exit_code == 0
    # A re-run of the second day replaces its runs: the previous run is the re-run's.
    assert api.run(cfg, all_jobs=True, as_of=DAYS[1]).exit_code == 0
    results: list[object] = []
    seen = _lookups_while(lambda: results.append(api.run(cfg, all_jobs=True, as_of=DAYS[2])))
    assert results[0].exit_code == 0  # type: ignore[attr-defined]
    # One query of each kind for the six jobs (SQLite and PostgreSQL alike), not one per job.
    assert sorted(seen) == sorted(MARKERS), seen
    runs = query(db_url, "SELECT job, as_of, run_id, replaced_by FROM scoring_runs WHERE status = 'succeeded'")
    for name in JOBS:
        mine = sorted((r for r in runs if r[0] == name), key=lambda r: r[2])
        first, rerun, today = mine[0][2], mine[2][2], mine[3][2]
        assert mine[1][3] == rerun  # the second day's first run was replaced by the re-run
        rows = query(db_url, "SELECT DISTINCT reference_profile, previous_run_id FROM drift WHERE run_id = :r",
                     r=today)
        assert rows == [(f"run:{first}", rerun)], (name, rows)
    assert query(db_url, "SELECT count(*) FROM drift WHERE job = :j", j=UNMONITORED) == [(0,)]
    assert query(db_url, "SELECT count(DISTINCT as_of) FROM fleet_out WHERE job = :j", j=UNMONITORED) == [(3,)]


def test_driver_rows_are_sqlalchemys_rows_as_the_cursor_fetched_them(db_url: str) -> None:
    """The profile read fetches from the cursor (no Row per row): the same values, NULLs,
    floats (infinite bounds too), big integers and text, through an expanding IN list;
    a column whose type converts its values (a Date on SQLite) takes SQLAlchemy's rows."""
    from batch_scorer.storage.db import create_engine, driver_rows

    md = sa.MetaData()
    t = sa.Table("dr", md, sa.Column("k", sa.String(20)), sa.Column("i", sa.BigInteger),
                 sa.Column("x", sa.Float(53)), sa.Column("c", sa.Text), sa.Column("d", sa.Date))
    rows = [{"k": f"p{n % 3}", "i": 2**40 + n, "x": [float("-inf"), 0.25, None, float("inf")][n % 4],
             "c": None if n % 2 else f"cat {n}'s", "d": AS_OF} for n in range(9)]
    engine = create_engine(db_url)
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(t.insert(), rows)
        with engine.connect() as conn:
            plain = sa.select(t.c.k, t.c.i, t.c.x, t.c.c).where(t.c.k.in_(["p0", "p2"])).order_by(t.c.i)
            assert driver_rows(conn, plain) == [tuple(r) for r in conn.execute(plain)]
            assert len(driver_rows(conn, plain)) == 6
            dated = sa.select(t.c.k, t.c.d).order_by(t.c.i)
            assert driver_rows(conn, dated) == [(r["k"], AS_OF) for r in rows]
    finally:
        engine.dispose()


def test_last_published_many_is_each_jobs_own_last_succeeded_run(tmp_path: Path, db_url: str) -> None:
    """The batched lookup gives what one query per job gives: the newest succeeded run
    (not a newer failed one, not another job's), and nothing for a job never published."""
    from batch_scorer.storage import ledger
    from batch_scorer.storage.db import create_engine

    cfg = _fleet(tmp_path, db_url)
    for day in DAYS[:2]:
        assert api.run(cfg, ["m0", "m1", "m2"], as_of=day).exit_code == 0
    (tmp_path / "models" / "m1.joblib").write_bytes(b"not a model")
    assert api.run(cfg, ["m1"], as_of=DAYS[2]).exit_code != 0  # m1's newest row: not succeeded
    engine = create_engine(db_url)
    try:
        names = ["m0", "m1", "m2", "m5", "never"]
        many = ledger.last_published_many(engine, names)
        assert set(many) == {"m0", "m1", "m2"}
        for name in names:
            assert ledger.last_published(engine, name) == many.get(name)
        newest = query(db_url, "SELECT max(run_id) FROM scoring_runs WHERE job = 'm1' AND status = 'succeeded'")
        assert many["m1"].run_id == newest[0][0] and many["m1"].as_of == DAYS[1]
    finally:
        engine.dispose()
