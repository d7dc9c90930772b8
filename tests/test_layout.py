"""The packages' shape: no import circle in any of them (every import counts:
module level, inside functions, under TYPE_CHECKING); no private name taken
from another module; providers that never import each other; an interface that
knows no provider; local commands that never load the cloud or SSH clients;
the contract the CLI shares with the images kept standard-library only; and
files small enough to read."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from support.importgraph import (
    PACKAGES,
    ROOT,
    Import,
    all_cycles,
    all_imports,
    find_cycle,
    import_graph,
    project_files,
    provider_of,
)

MAX_LINES = 400


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    files = project_files()
    assert {m.split(".")[0] for m in files} == set(PACKAGES), "some package's files were not found"
    found = all_imports()
    assert {i.importer.split(".")[0] for i in found} >= set(PACKAGES) - {"mlcluster_contract"}
    return found


def private_imports(imports: list[Import], compiled: set[str]) -> set[tuple[str, str]]:
    """`_name`s taken from another module. A private submodule imported from
    inside its own package (a compiled half such as bench/_engine) is the
    package's own business."""
    found = set()
    for imp in imports:
        if not imp.private:
            continue
        target = f"{imp.module}.{imp.name}" if not imp.module.endswith("." + imp.name) else imp.module
        if target in compiled or imp.module.endswith("." + imp.name):  # the name is a module
            if target.rpartition(".")[0] in (imp.importer, imp.importer.rpartition(".")[0]):
                continue
        found.add((imp.importer, target))
    return found


def compiled_modules() -> set[str]:
    """The C extension modules pyproject.toml builds (they have no .py to read)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {ext["name"] for ext in pyproject["tool"]["setuptools"].get("ext-modules", [])}


def provider_crossings(imports: list[Import]) -> set[tuple[str, str]]:
    return {(i.importer, i.module) for i in imports
            if provider_of(i.importer) and provider_of(i.module) and provider_of(i.importer) != provider_of(i.module)}


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert all_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}) == [["a", "b", "a"], ["b", "c", "b"]]


def test_every_kind_of_import_is_counted(tmp_path):
    """A function-level import and one under TYPE_CHECKING are edges like any other."""
    from support.importgraph import imports_in
    (tmp_path / "m.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import b\n"
                                   "def f():\n    import c\n    from .d import _e\n")
    found = imports_in("pkg.m", tmp_path / "m.py", {"a", "a.b", "c", "pkg", "pkg.d"})
    assert [(i.module, i.name) for i in found] == [("a.b", "b"), ("c", ""), ("pkg.d", "_e")]
    assert private_imports(found, set()) == {("pkg.m", "pkg.d._e")}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_circle_in_any_package(imports, package):
    graph = import_graph(imports)
    assert any(m.split(".")[0] == package for m in graph), "the graph was not built"
    assert "mlcluster.providers.aws.provider" in graph and graph["mlcluster.cli"] and graph["mlcluster_worker.app"]
    assert graph["mlcluster.deploy.remote"], "the graph was not built"
    cycles = all_cycles(graph, ignored_edges=set())
    assert [c for c in cycles if c[0].split(".")[0] == package] == []


def test_no_private_name_is_imported_from_another_module(imports):
    assert private_imports(imports, compiled_modules()) == set()


def test_providers_never_import_each_other(imports):
    assert provider_crossings(imports) == set()


def test_the_contract_is_standard_library_only():
    """The images install it as it is: it may import nothing outside the standard library."""
    path = ROOT / "contract" / "mlcluster_contract" / "__init__.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_only_the_adapter_imports_the_worker_from_the_cli(imports):
    """The CLI takes the contract from mlcluster_contract; it runs worker code
    (making and exporting models) through mlcluster/worker_code.py only."""
    importers = {i.importer for i in imports if i.module.startswith("mlcluster_worker")
                 and i.importer.startswith("mlcluster.")}
    assert importers == {"mlcluster.worker_code"}


def test_the_provider_interface_imports_no_provider(imports):
    imported = import_graph(imports)["mlcluster.providers.base"]
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


LOCAL_UP = """
import json, sys
from mlcluster.cli import app
try:
    app(["up", "--name", "light", "--model", "overhead-test", "-w", "1", "-m", "1"], standalone_mode=False)
    loaded = sorted(sys.modules)
finally:
    app(["down", "--name", "light", "--yes"], standalone_mode=False)
print(json.dumps(loaded))
"""


def test_a_local_up_never_imports_paramiko(tmp_path):
    """A local cluster is deployed by the same code as remote hosts (deploy/remote.py);
    the SSH parts load only where a remote host is reached."""
    env = dict(os.environ, MLCLUSTER_HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", LOCAL_UP], env=env, capture_output=True, text=True,
                            timeout=300, check=True)
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"mlcluster.deploy.remote", "mlcluster.deploy.process"} <= loaded
    assert not {m.split(".")[0] for m in loaded} & {"boto3", "botocore", "paramiko"}


def test_the_aws_provider_does_load_boto3():
    """The check above can fail: importing the aws provider loads boto3."""
    code = "import sys; import mlcluster.providers.aws.provider; print('boto3' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize("folder", ["mlcluster", "contract", "worker_image", "orchestrator_image", "tests",
                                    "benchmarks"])
def test_no_file_over_400_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
