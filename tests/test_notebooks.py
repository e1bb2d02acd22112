"""Execute every notebook in notebooks/ top to bottom in a fresh kernel with its default (tiny) parameters.

The kernel runs in a tmp_path working directory, so the tiny runs and stores the notebooks build never land in the
repository. ``USE_UMAP`` is overridden to False (UMAP's numba JIT alone costs ~40 s), the way papermill injects
parameters: a cell right after the one tagged ``parameters``.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
OVERRIDES = {"USE_UMAP": False}


def inject_overrides(notebook: nbformat.NotebookNode) -> None:
    """Insert ``OVERRIDES`` (those the parameters cell defines) right after the cell tagged ``parameters``."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = notebook.cells[index].source
    lines = [f"{name} = {value!r}" for name, value in OVERRIDES.items() if f"{name} =" in source]
    if lines:
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(lines)))


def test_notebooks_found():
    assert [path.name for path in NOTEBOOKS] == ["01_quickstart.ipynb", "02_disentanglement.ipynb",
                                                 "03_decomposition.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_committed_clean(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert "parameters" in notebook.cells[1].metadata.get("tags", []) or any(
        "parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "strip the outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # one thread: the tiny models run fastest that way and the CI machine has 2 shared cores
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    notebook = nbformat.read(path, as_version=4)
    inject_overrides(notebook)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any cell error
    assert not list(Path(path.parent).glob("notebook_work")), "a notebook wrote into the repository"
