"""Execute notebooks/quickstart.ipynb on a tiny subset so it cannot rot.

The code cells are run in order in one namespace (what a kernel does for this notebook), so no
Jupyter installation is needed; matplotlib is a test extra."""
import json
import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LATTENB_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace = {}
    n_code = 0
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[{n_code}]", "exec"), namespace)
            n_code += 1
    assert n_code >= 4
    # the notebook saved a model, measured errors on held-out data and ran MD
    assert (tmp_path / "quickstart-cu.npz").exists()
    assert namespace["F_pred"].shape == namespace["F_ref"].shape
    assert len(namespace["energies"]) == 11
    assert abs(namespace["energies"][-1] - namespace["energies"][0]) < 1e-2
    assert os.environ["LATTENB_QUICK"] == "1"
