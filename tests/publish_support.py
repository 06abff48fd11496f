"""A process that stages two outputs of one run and publishes them with one publish unit,
stopping in between when asked (the SIGKILL test), and one that scores rows and hands
back the output frames as Arrow IPC files (the shape a Dask worker uses).

    python -m tests.publish_support stage URL WAIT_FILE       # stage, print "staged", wait, publish
    python -m tests.publish_support score URL MODEL OUT_DIR   # score the features, write frames
"""

from __future__ import annotations

import sys
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from batch_scorer.core.chunk import ChunkWork, process_chunk
from batch_scorer.models.loader import load_model
from batch_scorer.storage import ledger
from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables, ensure_output
from batch_scorer.storage.schema import output_table, utcnow
from batch_scorer.storage.sinks.output import OutputSpec
from batch_scorer.storage.sinks.publish import Publication
from batch_scorer.storage.sources.spec import SourceSpec
from batch_scorer.storage.sources.sql import read_chunks

AS_OF = date(2026, 3, 31)
KEY = [("entity_id", sa.BigInteger())]


def tables() -> tuple[sa.Table, sa.Table]:
    """Two output tables of one run: 'first' and 'second'."""
    return (output_table("first", KEY, [], sa.BigInteger()), output_table("second", KEY, [], sa.Float(53)))


def start(engine: sa.Engine, job: str) -> tuple[int, list[OutputSpec]]:
    create_tool_tables(engine)
    for t in tables():
        ensure_output(engine, t, ["entity_id"], classifier=False)
    run_id = ledger.start_run(engine, job=job, model=ledger.ModelStamp(version="v"), as_of=AS_OF,
                              trigger="manual", output_table="first")
    consts = {"job": job, "as_of": AS_OF, "model_version": "v", "run_id": run_id, "scored_at": utcnow()}
    return run_id, [OutputSpec(t, consts, ("entity_id",)) for t in tables()]


def frame(n: int, offset: float, first_key: int = 1) -> pa.Table:
    return pa.table({"entity_id": pa.array(range(first_key, first_key + n), pa.int64()),
                     "prediction": pa.array([i % 3 for i in range(n)], pa.int64()),
                     "score": pa.array([offset + i / n for i in range(n)], pa.float64())})


def stage_then_publish(url: str, wait_file: str) -> None:
    engine = create_engine(url)
    run_id, (first, second) = start(engine, "two")
    pub = Publication(engine, run_id, "two", AS_OF)
    a, b = pub.stage(first), pub.stage(second)
    for i in range(3):  # several frames each, interleaved: the COPY switches tables
        a.write(frame(1000, 0.0, 1 + 1000 * i).to_pandas())
        b.write(frame(1000, 0.5, 1 + 1000 * i).to_pandas().assign(prediction=lambda f: f["prediction"] * 1.5))
    print("staged", flush=True)
    while not Path(wait_file).exists():  # the test kills us here, or lets us publish
        time.sleep(0.05)
    pub.publish(lambda conn: ledger.finish_run(conn, run_id, rows_read=3000, rows_scored=3000))
    print("published", flush=True)
    engine.dispose()


def score_to_files(url: str, model_path: str, out_dir: str) -> None:
    """Another process: read the features, score them, hand back only the output frames."""
    engine = create_engine(url)
    model = load_model("j", Path(model_path))
    columns = ["entity_id", *model.features]
    work = ChunkWork(job="j", keys=("entity_id",), champion=model, main_columns=("entity_id", "prediction", "score"))
    spec = SourceSpec(job="j", key=("entity_id",), table="features", as_of_column="snapshot_date")
    with engine.connect() as conn:
        for i, chunk in enumerate(read_chunks(conn, spec, AS_OF, columns, 70, model.features)):
            result = process_chunk(work, chunk)
            table = pa.Table.from_pandas(result.main, preserve_index=False)
            with pa.OSFile(str(Path(out_dir) / f"part-{i:04d}.arrow"), "wb") as sink:
                with pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
    engine.dispose()


if __name__ == "__main__":
    if sys.argv[1] == "stage":
        stage_then_publish(sys.argv[2], sys.argv[3])
    else:
        score_to_files(sys.argv[2], sys.argv[3], sys.argv[4])
