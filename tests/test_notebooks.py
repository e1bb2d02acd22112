"""Execute every notebook in notebooks/ top to bottom in a fresh kernel with its default (tiny) parameters.

The kernel runs in a tmp_path working directory, so the tiny runs and stores the notebooks build never land in the
repository. ``USE_UMAP`` is overridden to False (UMAP's numba JIT alone costs ~40 s), the way papermill injects
parameters: a cell right after the one tagged ``parameters``.
"""

from pathlib import Path

import nbformat
import pytest

from lisa_probe.notebook_runs import (
    NOTEBOOK_DIR,
    execute_notebook,
    inject_overrides,
    main,
    notebook_path,
    parse_override,
)

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
OVERRIDES = {"USE_UMAP": False}


def test_overrides_go_right_after_the_parameters_cell_and_only_where_defined():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os"),
        nbformat.v4.new_code_cell("STORES = []\nSTEPS = 3", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(STORES)")])
    assert inject_overrides(notebook, {"STORES": ["a.h5"], "OTHER": 1}) == ["STORES"]
    assert [cell.source for cell in notebook.cells][1:3] == ["STORES = []\nSTEPS = 3", "STORES = ['a.h5']"]
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        inject_overrides(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), {"x": 2})


def test_the_command_line_parses_literals_and_refuses_bad_input(tmp_path, capsys):
    assert parse_override('STORES=["a.h5", "b.h5"]') == ("STORES", ["a.h5", "b.h5"])
    for bad, message in (("STORES", "expected NAME=PYTHON_LITERAL"), ("STEPS=three", "not a Python literal")):
        with pytest.raises(SystemExit) as stop:
            main([str(tmp_path / "out"), "--set", bad])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "out"), "--notebooks", str(tmp_path / "missing.ipynb")])
    assert stop.value.code == 2 and "no such notebook" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_notebooks_by_name_and_a_run_that_goes_past_a_failing_one(tmp_path, capsys):
    assert notebook_path("03_decomposition") == notebook_path("03_decomposition.ipynb") == \
        NOTEBOOK_DIR / "03_decomposition.ipynb"
    cells = {"bad": ["X = 1", "raise ValueError(f'boom {X}')", "print('never')"], "good": ["X = 1", "print(X + 1)"]}
    for name, sources in cells.items():
        notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                     "display_name": "Python 3"}})
        notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
        notebook.cells[0].metadata["tags"] = ["parameters"]
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
    out = tmp_path / "out"
    assert main([str(out), "--notebooks", str(tmp_path / "bad.ipynb"), str(tmp_path / "good.ipynb"),
                 "--set", "X=7", "--workdir", str(tmp_path)]) == 1
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "FAILED  bad: ValueError: boom 7" in printed and "ok      good:" in printed
    assert "1 of 2 notebooks ran; failed: bad" in printed
    bad = nbformat.read(out / "bad.ipynb", as_version=4)
    assert bad.cells[2].outputs[0]["output_type"] == "error" and not bad.cells[3].outputs  # stopped there
    assert nbformat.read(out / "good.ipynb", as_version=4).cells[2].outputs[0]["text"] == "8\n"
    assert "boom 7" in (out / "bad.html").read_text() and (out / "good.html").stat().st_size > 0


def test_notebooks_found():
    assert [path.name for path in NOTEBOOKS] == ["01_quickstart.ipynb", "02_disentanglement.ipynb",
                                                 "03_decomposition.ipynb", "04_causal.ipynb"]


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
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend, as a user's JupyterLab
    monkeypatch.setenv("TQDM_DISABLE", "1")
    notebook = execute_notebook(path, OVERRIDES, tmp_path, timeout=300)  # CellExecutionError on any cell error
    assert not list(Path(path.parent).glob("notebook_work")), "a notebook wrote into the repository"
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 2, "the notebook's figures are not shown inline"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_on_foreign_and_factorless_stores(path, foreign_stores, tmp_path, monkeypatch):
    """A foreign ControlNet's store (no run here) and a captioned store without factors: every notebook runs,
    says what it skips and why, and builds no demo runs."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    stores = [str(foreign_stores["shapes"]), str(foreign_stores["captioned"])]
    notebook = execute_notebook(path, {**OVERRIDES, "STORES": stores}, tmp_path, timeout=300)
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert "building tiny demo runs" not in text and not (tmp_path / "notebook_work" / "runs").exists()
    expected = {"01_quickstart": "no run directory here, so no training curves",
                "02_disentanglement": "no generating factors in common",
                "03_decomposition": "the model-based decomposition needs one",
                "04_causal": "a ControlNet lisa_probe did not train"}[path.stem]
    assert expected in text


@pytest.mark.slow
def test_a_missing_store_path_fails_naming_it(tmp_path):
    with pytest.raises(Exception, match="STORES not found: features/typo.h5") as error:
        execute_notebook(NOTEBOOKS[1], {**OVERRIDES, "STORES": ["features/typo.h5"]}, tmp_path, timeout=120)
    assert type(error.value).__name__ == "CellExecutionError" and not (tmp_path / "notebook_work").exists()
