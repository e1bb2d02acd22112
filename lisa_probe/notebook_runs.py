"""Execute the notebooks with parameters, papermill-style: a cell setting the overrides is inserted right after the
cell tagged ``parameters``, then every cell runs top to bottom in a fresh kernel.

    python -m lisa_probe.notebook_runs OUT_DIR --set 'STORES=["a.h5", "b.h5"]' [--set NAME=PYTHON_LITERAL ...]
        [--notebooks notebooks/01_quickstart.ipynb ...] [--workdir DIR]

writes each executed notebook, outputs included, to ``OUT_DIR/<name>.ipynb`` (the tests run the committed ones with
their tiny defaults the same way). nbformat and nbclient come with the ``notebooks`` / ``dev`` extras.
"""

from __future__ import annotations

import argparse
import ast
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
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    inject_overrides(notebook, overrides)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


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

    parser = argparse.ArgumentParser(prog="python -m lisa_probe.notebook_runs", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the executed notebooks")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="NAME=VALUE", help="a parameter override (a Python literal); repeatable")
    parser.add_argument("--notebooks", type=Path, nargs="+", default=sorted(NOTEBOOK_DIR.glob("*.ipynb")))
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="the kernels' working directory (%(default)s)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.notebooks if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        notebook = execute_notebook(path, dict(args.overrides), args.workdir.resolve())
        nbformat.write(notebook, args.out / path.name)
        print(f"wrote {args.out / path.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
