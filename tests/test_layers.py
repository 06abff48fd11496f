"""Dependencies point one way (STYLE.md): CLI -> API/scheduler -> pipeline -> stages -> base.

A stage never imports the pipeline, the API or the CLI; the base modules
(errors, config, db, schema) import no stage. Checked on the source with ast.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batch_scorer"
BASE = {"errors", "files", "config", "db", "schema"}
STAGES = {"source", "model", "checks", "sink", "ledger", "progress"}
ORCHESTRATION = {"pipeline"}
TOP = {"api", "scheduler", "backfill", "demo", "cli", "__main__"}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batch_scorer"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("batch_scorer."):
                    found.add(alias.name.split(".")[1])
    return found


def _modules() -> dict[str, set[str]]:
    return {p.stem: _internal_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_only_the_entry_point_imports_the_cli() -> None:
    offenders = {m for m, deps in _modules().items() if "cli" in deps and m != "__main__"}
    assert not offenders


def test_base_modules_import_no_stage_or_anything_above() -> None:
    above = STAGES | ORCHESTRATION | TOP
    offenders = {m: deps & above for m, deps in _modules().items() if m in BASE and deps & above}
    assert not offenders


def test_stages_do_not_import_the_pipeline_api_or_cli() -> None:
    above = ORCHESTRATION | TOP
    offenders = {m: deps & above for m, deps in _modules().items() if m in STAGES and deps & above}
    assert not offenders


def test_pipeline_does_not_import_the_api_or_cli() -> None:
    assert not _modules()["pipeline"] & TOP
