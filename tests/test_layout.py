"""The package's shape: no import circle inside mlcluster/, an interface that
knows no provider, local commands that never load the cloud or SSH clients,
and files small enough to read."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mlcluster"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (never run)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
            yield from (n for orelse in child.orelse for n in [orelse, *_runtime_nodes(orelse)])
            continue
        yield child
        yield from _runtime_nodes(child)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The mlcluster modules `path` imports, at any depth of its code
    (function-level imports count: a circle through them is still a circle)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # the longest known module the target names (`from . import x` may name a module or a value)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) for name, path in files.items()}


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


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_inside_mlcluster():
    graph = import_graph()
    assert "mlcluster.providers.aws.provider" in graph and graph["mlcluster.cli"], "the graph was not built"
    assert find_cycle(graph) == []


def test_the_provider_interface_imports_no_provider():
    imported = import_graph()["mlcluster.providers.base"]
    providers = {m for m in imported if m.startswith("mlcluster.providers.") and m != "mlcluster.providers"}
    assert imported and not providers, providers


def test_every_registered_provider_loads_and_names_itself():
    from mlcluster.providers import REGISTRY, get_provider
    for name in REGISTRY:
        assert get_provider(name).name == name


LOCAL_COMMANDS = """
import json, sys
from mlcluster.cli import app
from mlcluster.providers import get_provider
from mlcluster.state import ClusterSpec
provider = get_provider("local")
assert provider.plan(ClusterSpec()) is None
try:
    app(["list"], standalone_mode=False)
    app(["status", "--name", "nothing-here"], standalone_mode=False)
except Exception as exc:
    assert type(exc).__name__ == "ClusterNotFound", exc
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules)))
"""


def test_local_commands_never_import_boto3_or_paramiko(tmp_path):
    env = dict(os.environ, MLCLUSTER_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", LOCAL_COMMANDS], env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "mlcluster" in loaded and "typer" in loaded
    assert not loaded & {"boto3", "botocore", "paramiko"}


def test_the_aws_provider_does_load_boto3():
    """The check above can fail: importing the aws provider loads boto3."""
    code = "import sys; import mlcluster.providers.aws.provider; print('boto3' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("folder", ["mlcluster", "tests", "benchmarks"])
def test_no_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
