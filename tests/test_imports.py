"""The import rules of docs/architecture.md, checked on every import statement in src/latentflows.

An import counts wherever it stands: at module level, in a function or a method, under an
``if`` (``TYPE_CHECKING`` included). A lazy import only delays a cycle; it does not remove it.
"""

import ast
from pathlib import Path

import latentflows as lf

SRC = Path(lf.__file__).resolve().parent
# the lower layers import each other only, lazily or not, never a module built on them
LOWER = {f"latentflows.{name}" for name in
         ("errors", "extras", "registry", "storage", "autodiff", "layers", "losses", "runtime")}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package in folder ``root`` (a package's name is its ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """Each module's imports of the package's own modules, with the line of the first one:
    ``{module: {imported module: line}}``.

    Relative imports are resolved. ``from pkg import name`` imports the submodule
    ``pkg.name`` when there is one, else ``pkg`` itself. As in Python, importing ``pkg.sub``
    from outside ``pkg`` first runs ``pkg/__init__.py``: that is an import of ``pkg`` too, and
    ``pkg``'s own imports are edges like any module's, so a chain through a package's
    ``__init__`` is seen. (A package the importer lives in is already running: no edge.)
    """
    modules = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
                submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
                targets = submodules + ([source] if len(submodules) < len(node.names) else [])
            for target in targets:
                parts = target.split(".")
                packages = [".".join(parts[:end]) for end in range(1, len(parts))]
                for module in [*packages, target]:
                    inside = name == module or name.startswith(module + ".")
                    if module in modules and (module == target or not inside) and module != name:
                        edges.setdefault(module, node.lineno)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle through each group of mutually importing modules (Tarjan's strongly
    connected components, then a breadth-first search from the group's first module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for edge in graph[node]:
            if edge not in index:
                connect(edge)
                low[node] = min(low[node], low[edge])
            elif edge in stack:
                low[node] = min(low[node], index[edge])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    cycles = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in graph[frontier[0]]:
            node = frontier.pop(0)
            for edge in sorted(set(graph[node]) & group - set(paths)):
                paths[edge] = paths[node] + [edge]
                frontier.append(edge)
        cycles.append(paths[frontier[0]] + [start])
    return sorted(cycles)


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def test_the_graph_sees_lazy_imports_submodules_and_package_inits(tmp_path):
    files = {
        "__init__.py": "from .low import f\n",
        "low.py": "def f():\n    from .high import g\n    return g\n",
        "high.py": "from . import low\n\ndef g():\n    return low\n",
        "typed.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.other import H\n",
        "other.py": "import os\n\nclass H:\n    def h(self):\n        from pkg.sub.runner import run\n        return run\n",
        "leaf.py": "from pkg.sub import run\n",
        "sub/__init__.py": "from .runner import run\n",
        "sub/runner.py": "from ..typed import TYPE_CHECKING\n\ndef run():\n    pass\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg"] == {"pkg.low": 1}
    assert graph["pkg.low"] == {"pkg.high": 2}  # inside a function
    assert graph["pkg.high"] == {"pkg.low": 1}  # `from . import low` is the submodule, not the package
    assert graph["pkg.typed"] == {"pkg.other": 4}  # under `if TYPE_CHECKING`
    assert graph["pkg.other"] == {"pkg.sub": 5, "pkg.sub.runner": 5}  # in a method; pkg/sub/__init__ runs first
    assert graph["pkg.leaf"] == {"pkg.sub": 1}  # a name from a package is its __init__'s
    assert graph["pkg.sub"] == {"pkg.sub.runner": 1}
    assert graph["pkg.sub.runner"] == {"pkg.typed": 1}  # its own packages are already running
    cycles = import_cycles(graph)
    assert cycles == [["pkg.high", "pkg.low", "pkg.high"], ["pkg.other", "pkg.sub.runner", "pkg.typed", "pkg.other"]]
    assert _describe(cycles[0], graph) == "pkg.high (line 1) -> pkg.low (line 2) -> pkg.high"


def test_no_import_cycles_at_any_depth():
    graph = import_graph(SRC)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(cycle, graph) for cycle in cycles)
    assert "latentflows.autodiff" in graph["latentflows.flows.bijections"]  # the graph sees real imports
    assert "latentflows.plots" in graph["latentflows.training.runner"]  # and those inside functions
    assert not any(edge.startswith("latentflows.flows") for edge in graph["latentflows.autodiff"])


def test_lower_layers_import_nothing_above_them():
    graph = import_graph(SRC)
    assert LOWER <= set(graph)
    upward = [f"{module} imports {target} (line {line})" for module in sorted(LOWER)
              for target, line in sorted(graph[module].items()) if target not in LOWER]
    assert not upward, "lower layers importing upward:\n" + "\n".join(upward)
