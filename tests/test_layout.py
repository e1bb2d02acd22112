"""The package's shape: no import cycles (``TYPE_CHECKING`` imports included), no command-line module imported by
library code, nothing imported upward across the stages, thin command lines whose ``--help`` loads no torch."""

import ast
import subprocess
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lisa_probe"
# the command lines: they parse first and import the library after, inside main() (so --help is quick)
CLI_MODULES = {"lisa_probe.train", "lisa_probe.pretrain", "lisa_probe.extract", "lisa_probe.analyze",
               "lisa_probe.add_factors", "lisa_probe.sample", "lisa_probe.intervene",
               "lisa_probe.dictionary", "lisa_probe.over_training", "lisa_probe.__main__",
               "lisa_probe.study.cli", "lisa_probe.study.__main__", "lisa_probe.study.restate"}
# stages that must not import one another: the analysis reads stores and loads runs, never trains
FORBIDDEN = {"lisa_probe.analysis": ("lisa_probe.training.engine", "lisa_probe.training.side_net",
                                     "lisa_probe.training.main_net", "lisa_probe.study", "lisa_probe.extraction"),
             "lisa_probe.training": ("lisa_probe.analysis", "lisa_probe.study", "lisa_probe.extraction"),
             "lisa_probe.extraction": ("lisa_probe.analysis", "lisa_probe.study"),
             "lisa_probe.data": ("lisa_probe.training", "lisa_probe.analysis", "lisa_probe.models"),
             "lisa_probe.models": ("lisa_probe.training", "lisa_probe.analysis")}
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "sklearn", "seaborn")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], type_checking: bool = False, top_level: bool = True) -> set[str]:
    """lisa_probe modules ``path`` imports (with ``type_checking``, also those under ``if TYPE_CHECKING:``; with
    ``top_level`` only, not those inside functions); ``from package import submodule`` counts as the submodule."""
    found = set()
    tree = ast.parse(path.read_text())
    type_only = {id(child) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                 for child in ast.walk(node)}
    in_functions = {id(child) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for child in ast.walk(node)}
    for node in ast.walk(tree):
        if (id(node) in type_only and not type_checking) or (id(node) in in_functions and top_level):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lisa_probe"):
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                         for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lisa_probe"))
    return found


def graph(type_checking: bool = False, top_level: bool = True) -> dict[str, set[str]]:
    """module -> the modules it imports, without a submodule's imports of its own parent packages (Python has
    loaded those first)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in imports_of(path, set(modules), type_checking, top_level)
                   if target in modules and not name.startswith(target + ".")} for name, path in modules.items()}


def test_no_import_cycles_not_even_through_type_checking_imports():
    edges = graph(type_checking=True)
    state: dict[str, int] = {}

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(target):], target])}")
            if target not in state:
                visit(target, [*stack, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_library_code_imports_no_command_line_module():
    offenders = {name: sorted(targets & CLI_MODULES) for name, targets in graph(top_level=False).items()
                 if targets & CLI_MODULES and name not in CLI_MODULES}
    assert offenders == {}


def test_no_stage_imports_one_it_must_not():
    offenders = {name: sorted(target for target in targets if target.startswith(FORBIDDEN[stage]))
                 for name, targets in graph(type_checking=True, top_level=False).items()
                 for stage in FORBIDDEN if name == stage or name.startswith(stage + ".")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_no_function_level_imports_of_the_package_outside_the_command_lines():
    """Library modules import lisa_probe at their top, where the dependency graph can be read; the command lines
    import the library inside ``main`` once the options are parsed."""
    inside = []
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) in CLI_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for child in ast.walk(node):
                    if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("lisa_probe"):
                        inside.append(f"{module_name(path)}.{node.name}: {child.module}")
    assert inside == []


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_the_settings_and_the_analysis_package_load_no_heavy_library():
    """The settings every command line parses into, and ``lisa_probe.analysis`` itself, import no torch, diffusers,
    transformers, accelerate, scikit-learn or seaborn; the analysis pipeline loads runs but not the training loop."""
    light = loaded_by("import lisa_probe.training.config, lisa_probe.extraction.config, lisa_probe.analysis.config, "
                      "lisa_probe.analysis")
    assert not {name for name in light if name.split(".")[0] in HEAVY}
    report = loaded_by("import lisa_probe.analysis.report.report")
    assert not report & {"lisa_probe.training.engine", "lisa_probe.training.side_net", "lisa_probe.training.main_net"}


def test_every_command_line_answers_help_without_loading_the_library():
    """``--help`` of each command in a fresh process: exit 0, and well under the 1.5 s goal measured by
    bench/bench_help.py (this bound is generous for a busy CI machine)."""
    for command in ("train", "pretrain", "extract", "analyze", "study", "add_factors", "sample", "intervene",
                    "dictionary", "over_training"):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", f"lisa_probe.{command}", "--help"], capture_output=True,
                                text=True)
        assert result.returncode == 0 and "usage: python -m lisa_probe." in result.stdout, result.stderr
        assert time.perf_counter() - started < 5.0, command
