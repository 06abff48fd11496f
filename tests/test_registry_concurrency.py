"""Two processes changing the registry at the same moment leave it consistent: two
promotes give one alias value and two chained events, two registers two versions,
and neither process sees an error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from batch_scorer.storage.db import create_engine
from batch_scorer.storage.ddl import create_tool_tables
from tests.helpers import query, save_model, train
from tests.registry_support import ok, registry_config, setup_source

# Each racer imports everything first, says it is ready, then waits for the starting
# gun, so both commands start within milliseconds of each other.
_RACER = """
import sys, time
from pathlib import Path
from batch_scorer.cli.main import main
Path(sys.argv[2]).touch()
while not Path(sys.argv[1]).exists():
    time.sleep(0.002)
main(sys.argv[3:])
"""


def _race(tmp_path: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    go = tmp_path / "go"
    procs = []
    for i, argv in enumerate(commands):
        ready = tmp_path / f"ready{i}"
        procs.append((ready, subprocess.Popen([sys.executable, "-c", _RACER, str(go), str(ready), *argv],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready, _ in procs):
        assert time.monotonic() < deadline, "the racers never got ready"
        assert all(p.poll() is None for _, p in procs), [p.communicate() for _, p in procs]
        time.sleep(0.01)
    go.touch()
    done = []
    for _, p in procs:
        out, err = p.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def test_two_promotes_at_once_leave_one_alias_value_and_two_events(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config = registry_config(tmp_path, db_url)
    for i, kind in enumerate(("binary", "forest", "multiclass"), start=1):
        ok(config, "models", "register", "churn", str(save_model(train(kind), tmp_path / f"m{i}.joblib")))
    ok(config, "models", "promote", "churn", "1")

    results = _race(tmp_path, ["--config", str(config), "models", "promote", "churn", "2"],
                    ["--config", str(config), "models", "promote", "churn", "3"])

    for r in results:
        assert r.returncode == 0 and "Error" not in r.stderr, r.stderr
    aliases = query(db_url, "SELECT alias, version FROM model_aliases")
    events = query(db_url, "SELECT from_version, to_version FROM model_alias_events ORDER BY id")
    assert len(aliases) == 1 and aliases[0][1] in (2, 3)
    assert len(events) == 3
    # Serialized: the second promote saw the first one's result, and the alias is the last one's.
    assert events[2][0] == events[1][1] and events[2][1] == aliases[0][1]


def test_two_registers_at_once_get_two_version_numbers(tmp_path: Path, db_url: str) -> None:
    setup_source(db_url)
    config = registry_config(tmp_path, db_url)
    engine = create_engine(db_url)
    try:
        create_tool_tables(engine)  # the race is about version numbers, not about creating tables
    finally:
        engine.dispose()
    paths = [str(save_model(train(kind), tmp_path / f"{kind}.joblib")) for kind in ("binary", "forest")]

    results = _race(tmp_path, *(["--config", str(config), "models", "register", "churn", p] for p in paths))

    for r in results:
        assert r.returncode == 0 and "Error" not in r.stderr, r.stderr
    assert sorted(query(db_url, "SELECT version FROM model_versions WHERE name = 'churn'")) == [(1,), (2,)]
    said = sorted(r.stdout.split(":")[0] for r in results)
    assert said == ["churn v1", "churn v2"]
