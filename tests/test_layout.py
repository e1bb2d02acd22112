"""The package's import graph: no cycles, and no command-line module imported by library code."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lisa_probe"
CLI_MODULES = {"lisa_probe.train", "lisa_probe.pretrain", "lisa_probe.extract", "lisa_probe.analyze",
               "lisa_probe.study"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """lisa_probe modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks left out; ``from package import
    submodule`` counts as the submodule)."""
    found = set()
    tree = ast.parse(path.read_text())
    type_only = {id(child) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                 for child in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lisa_probe"):
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                         for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("lisa_probe"))
    return found


def graph() -> dict[str, set[str]]:
    """module -> the modules it imports, without a submodule's imports of its own parent packages (Python has
    loaded those first)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {target for target in imports_of(path, set(modules))
                   if target in modules and not name.startswith(target + ".")} for name, path in modules.items()}


def test_no_import_cycles():
    edges = graph()
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
    offenders = {name: sorted(targets & CLI_MODULES) for name, targets in graph().items()
                 if targets & CLI_MODULES and name not in CLI_MODULES - {"lisa_probe.study"}}
    assert offenders == {}


def test_no_function_level_imports_of_the_package():
    """Imports of lisa_probe modules sit at the top of each module, where the dependency graph can be read."""
    inside = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for child in ast.walk(node):
                    if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("lisa_probe"):
                        inside.append(f"{module_name(path)}.{node.name}: {child.module}")
    assert inside == []
