"""The analysis notebook runs top to bottom against the committed reference results."""
import shutil

import nbformat
from nbclient import NotebookClient

from tests.conftest import ROOT


def test_notebook_executes_and_is_committed_clean(tmp_path):
    path = ROOT / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    copy = tmp_path / "analysis.ipynb"
    shutil.copy(path, copy)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "job directories" in text and "Verdict:" in text
