"""notebooks/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient) on
SQLite: it trains, registers, scores through the API and reads the predictions back."""

from __future__ import annotations

import json
from pathlib import Path

import nbclient
import nbformat
import pytest
import sqlalchemy as sa

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _outputs(nb: nbformat.NotebookNode) -> str:
    """Every cell's output as text: streams, results, and the HTML of tables."""
    parts: list[str] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts.extend(str(data.get(kind, "")) for kind in ("text/plain", "text/html"))
    return "\n".join(parts)


def test_the_quickstart_notebook_runs_and_shows_the_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    # The kernel inherits this process's environment.
    monkeypatch.setenv("QUICKSTART_DIR", str(work))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    text = _outputs(nb)
    assert "Traceback" not in text
    assert "succeeded run 1" in text and "2000 rows scored, 0 rejected" in text
    assert "succeeded run 2" in text and "drift alert" in text
    # The predictions, read back with pandas, are in the outputs (a table of the _latest view).
    assert "<table" in text and "score" in text and "customer_id" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the score histogram and the PSI bars

    engine = sa.create_engine(f"sqlite:///{work / 'shop.db'}")
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT run_id, status, rows_scored FROM scoring_runs ORDER BY run_id")).all()
            latest = conn.execute(sa.text("SELECT count(*), count(DISTINCT customer_id) FROM repurchase_scores_latest"))
            drifted = conn.execute(sa.text("SELECT status FROM drift_latest WHERE feature = 'basket_value'")).all()
            assert [tuple(r) for r in runs] == [(1, "succeeded", 2000), (2, "succeeded", 2000)]
            assert tuple(latest.one()) == (2000, 2000)
            assert drifted == [("alert",)]
    finally:
        engine.dispose()


def test_the_committed_notebook_has_no_outputs_and_points_nowhere_outside() -> None:
    """Outputs are made by running it (dates are today's); the cells only use the public API."""
    nb = json.loads(NOTEBOOK.read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    source = "".join("".join(c["source"]) for c in nb["cells"])
    assert "from batch_scorer import api" in source
    assert "batch_scorer." not in source.replace("batch_scorer import api", "")
    assert "../" not in source
