"""Execute the notebooks with parameters, papermill-style: a cell setting the overrides is inserted right after the
cell tagged ``parameters``, then every cell runs top to bottom in a fresh kernel.

    python -m lisa_probe.notebook_runs OUT_DIR --set 'STORES=["a.h5", "b.h5"]' [--set NAME=PYTHON_LITERAL ...]
        [--notebooks 02_disentanglement 03_decomposition ...] [--workdir DIR]

writes each executed notebook, outputs included, to ``OUT_DIR/<name>.ipynb`` and as a page to ``OUT_DIR/<name>.html``
(nbconvert), goes on past a notebook that fails (its copy keeps the outputs up to the failing cell and the error),
prints one plain line per notebook and exits 1 if any failed. The tests run the committed notebooks with their tiny
defaults the same way. nbformat, nbclient and nbconvert come with the ``notebooks`` / ``dev`` extras.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def inject_overrides(notebook, overrides: Mapping[str, Any]) -> list[str]:
    """Insert ``NAME = value`` for each override that the ``parameters`` cell defines right after that cell; returns
    the names it set. ValueError when the notebook has no ``parameters`` cell."""
    import nbformat

    index = next((i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])), None)
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    source = notebook.cells[index].source
    names = [name for name in overrides if f"{name} =" in source]
    if names:
        lines = [f"{name} = {overrides[name]!r}" for name in names]
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(lines), metadata={
            "tags": ["injected-parameters"]}))
    return names


def execute_notebook(path: Path, overrides: Mapping[str, Any], workdir: Path, timeout: int = 600):
    """Run the notebook at ``path`` with ``overrides`` in a fresh kernel whose working directory is ``workdir``;
    returns the executed notebook. Raises nbclient's CellExecutionError (cell and traceback) on any cell error."""
    notebook, error = run_notebook(path, overrides, workdir, timeout)
    if error is not None:
        raise error
    return notebook


def run_notebook(path: Path, overrides: Mapping[str, Any], workdir: Path, timeout: int = 600):
    """``(executed notebook, None)``, or ``(the notebook executed up to and including its failing cell, the
    CellExecutionError)``: the error is in the failing cell's outputs, as Jupyter shows it."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    inject_overrides(notebook, overrides)
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    except CellExecutionError as error:
        return notebook, error
    return notebook, None


def plain(text: str) -> str:
    """``text`` without ANSI escape codes (the colours of IPython's tracebacks)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def error_line(error: Exception) -> str:
    """The last line of a cell error (``ExceptionName: message``), in plain text."""
    lines = [line for line in plain(str(error)).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return (named or lines or [type(error).__name__])[-1].strip()


def notebook_path(name: str) -> Path:
    """A notebook given by path, or by name in ``notebooks/`` (``03_decomposition`` or ``03_decomposition.ipynb``);
    argparse's error naming the notebooks there when neither exists."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (NOTEBOOK_DIR / name, NOTEBOOK_DIR / f"{name}.ipynb"):
        if candidate.is_file():
            return candidate
    known = ", ".join(p.stem for p in sorted(NOTEBOOK_DIR.glob("*.ipynb")))
    raise argparse.ArgumentTypeError(f"no such notebook: {name} (a path, or one of {known})")


def parse_override(text: str) -> tuple[str, Any]:
    """'NAME=PYTHON_LITERAL' -> (NAME, value); ValueError naming the text otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=PYTHON_LITERAL, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError) as error:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a Python literal ({error})") from error


def main(argv: Sequence[str] | None = None) -> int:
    import nbformat
    from nbconvert import HTMLExporter

    parser = argparse.ArgumentParser(prog="python -m lisa_probe.notebook_runs", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the executed notebooks and their HTML pages")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="NAME=VALUE", help="a parameter override (a Python literal); repeatable")
    parser.add_argument("--notebooks", type=notebook_path, nargs="+", metavar="NOTEBOOK",
                        default=sorted(NOTEBOOK_DIR.glob("*.ipynb")),
                        help="notebook names in notebooks/ (e.g. 03_decomposition) or .ipynb paths (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="the kernels' working directory (%(default)s)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (%(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for path in args.notebooks:
        notebook, error = run_notebook(path, dict(args.overrides), args.workdir.resolve(), args.timeout)
        nbformat.write(notebook, args.out / path.name)
        html, _ = HTMLExporter().from_notebook_node(notebook)
        (args.out / f"{path.stem}.html").write_text(html)
        written = f"{args.out / path.name}, {args.out / path.stem}.html"
        if error is None:
            print(f"ok      {path.stem}: {written}", flush=True)
        else:
            failed.append(path.stem)
            print(f"FAILED  {path.stem}: {error_line(error)} (outputs up to the failing cell: {written})",
                  flush=True)
    print(f"{len(args.notebooks) - len(failed)} of {len(args.notebooks)} notebooks ran"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
