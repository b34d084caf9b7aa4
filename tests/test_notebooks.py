"""The notebooks in notebooks/ are executed top to bottom (nbclient, a fresh ipykernel) on
small settings, so that they never rot; the committed files carry no outputs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is in the dev extra")
nbclient = pytest.importorskip("nbclient", reason="nbclient is in the dev extra")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["quickstart.ipynb", "bring_your_own.ipynb"]
#: small settings read by each notebook's parameter cell
SMALL = {"KCC_NB_ROWS": "4000", "KCC_NB_EPOCHS": "1", "KCC_NB_TRIALS": "2"}


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_stripped(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), \
        f"{name}: outputs must be stripped before committing"
    assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{name}: no parameter cell"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    for key, value in {**SMALL, "KCC_NB_OUT": str(tmp_path / "out"), "KCC_QUIET": "0"}.items():
        monkeypatch.setenv(key, value)
    # the kernel and the notebook's `python -m keras_ctr_compress.cli` use this interpreter
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{name}: a cell failed: {str(e)[-3000:]}")
    seconds = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the last code cell printed something (the notebook reached its end with results)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert any(o.get("text") for o in last.outputs if o.output_type == "stream"), last.outputs
    assert (tmp_path / "out").exists()
    print(f"{name}: {seconds:.0f} s")
