"""Every import of the project's packages, read from the source with `ast`:
module level, inside functions, and under `if TYPE_CHECKING:` alike (a circle
through any of them is still a circle for a reader, and one moved import away
from breaking at run time)."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# top-level package -> the folder it lives in
PACKAGES = {
    "mlcluster": ROOT,
    "mlcluster_contract": ROOT / "contract",
    "mlcluster_worker": ROOT / "worker_image",
    "mlcluster_orchestrator": ROOT / "orchestrator_image",
}


@dataclass(frozen=True)
class Import:
    importer: str  # the module whose source holds the import statement
    module: str  # the longest project module the statement names ("" when it names none)
    name: str  # the name taken from it (`from m import name`), "" for `import m`
    line: int

    @property
    def private(self) -> bool:
        """A `_name` (not a dunder) taken from another module: a value or a submodule."""
        return self.name.startswith("_") and not self.name.startswith("__")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    files: dict[str, Path] = {}
    for package, root in PACKAGES.items():
        for path in (root / package).rglob("*.py"):
            files[module_name(path, root)] = path
    return files


def _known(target: str, modules: set[str]) -> str:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def imports_in(name: str, path: Path, modules: set[str]) -> list[Import]:
    """Every import statement of module `name` (at any depth of its code) that
    names a project module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = _known(alias.name, modules)
                if module:
                    found.append(Import(name, module, "", node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                # `from . import x` may name a module or a value: the longest known module wins
                module = _known(f"{base}.{alias.name}", modules)
                if module:
                    found.append(Import(name, module, alias.name, node.lineno))
    return found


def all_imports() -> list[Import]:
    files = project_files()
    modules = set(files)
    return [imp for name, path in sorted(files.items()) for imp in imports_in(name, path, modules)]


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in project_files()}
    for imp in imports:
        if imp.module != imp.importer:
            graph[imp.importer].add(imp.module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or [] when the graph has none.
    A package's own __init__ importing a submodule is not a circle with it."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue  # a module's import of its parent package: Python runs the parent first
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def all_cycles(graph: dict[str, set[str]], ignored_edges: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """Circles one by one: each found is broken at its first edge and the search goes on."""
    graph = {node: set(targets) - {t for (s, t) in ignored_edges if s == node} for node, targets in graph.items()}
    cycles = []
    while cycle := find_cycle(graph):
        cycles.append(cycle)
        graph[cycle[0]].discard(cycle[1])
    return cycles


def provider_of(module: str) -> str:
    """`mlcluster.providers.<name>...` -> name, for a provider's own modules; else ""."""
    parts = module.split(".")
    if len(parts) > 2 and parts[:2] == ["mlcluster", "providers"] and parts[2] not in ("base", "__init__"):
        return parts[2]
    return ""
