"""Notebooks are stored without outputs; sweep_analysis.ipynb runs end to end on a micro sweep (slow)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from steprune.sweeps.runner import run_sweep
from tests.sweeps.conftest import write_micro_sweep

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.slow
def test_sweep_analysis_runs_on_a_micro_sweep(micro_base_dir, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    config = write_micro_sweep(tmp_path, micro_base_dir, name="nb", n_trials=3, pruner={"name": "none"})
    assert run_sweep(config)["counted"] == 3
    monkeypatch.setenv("SWEEP_CONFIG", str(config))
    nb = nbformat.read(next(p for p in NOTEBOOKS if p.name == "sweep_analysis.ipynb"), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells for o in c.get("outputs", [])
    )
    assert "study nb: 3 trials" in text
    assert "1 parent run, 3 nested trial runs" in text
    assert "importance for val/retention" in str(nb.cells[-1].outputs) or "val/retention {" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3, "Pareto front, validation curves, importances"
