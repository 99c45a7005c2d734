"""The house of layers, checked from the source: what may import what, and how big a module may grow."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import networkx as nx
import pytest

from privflow.codedeps import ROOT as PACKAGE_ROOT
from privflow.codedeps import STAGES, import_graph
from tests.conftest import ROOT

MODULE_LINES, STAGE_LINES = 300, 150


def source_files() -> list[Path]:
    return sorted([*(ROOT / "components").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])


def test_no_stage_imports_another_stage():
    graph = import_graph()
    crossing = [(module, imported) for module, imports in graph.items() if module.startswith("privflow.stages.")
                for imported in imports if imported.startswith("privflow.stages.")]
    assert crossing == []


def test_the_library_has_no_import_cycle():
    graph = nx.DiGraph([(module, imported) for module, imports in import_graph().items() for imported in imports])
    assert list(nx.simple_cycles(graph)) == []


def test_the_cli_package_has_no_import_cycle():
    edges = []
    for path in (ROOT / "flows").rglob("*.py"):
        parts = [p for p in path.relative_to(ROOT / "flows").with_suffix("").parts if p != "__init__"]
        module = ".".join(["privflow.flows", *parts])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("privflow.flows"):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
                edges += [(module, t) for t in targets if t != module and t != "privflow.flows"]
    graph = nx.DiGraph(edges)
    assert list(nx.simple_cycles(graph)) == []


def test_the_library_never_imports_prefect_or_the_flows():
    offenders = []
    for path in (ROOT / "components").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [(path.name, n) for n in names if n.split(".")[0] == "prefect" or n.startswith("privflow.flows")]
    assert offenders == []


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path):
    lines = len(path.read_text().splitlines())
    limit = STAGE_LINES if path.parent.name == "stages" else MODULE_LINES
    assert lines <= limit, f"{path.relative_to(ROOT)}: {lines} lines, above {limit}: split it by job"


def test_every_stage_of_the_dag_has_its_thin_module():
    assert sorted(p.stem for p in (PACKAGE_ROOT / "stages").glob("*.py") if p.stem != "__init__") == sorted(STAGES)


def test_pyproject_lists_every_package_folder():
    """setuptools cannot find packages across two folders mapped into one: the list is kept by hand, and checked here."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"privflow": ROOT / "components", "privflow.flows": ROOT / "flows"}
    found = {".".join([name, *init.parent.relative_to(folder).parts])
             for name, folder in folders.items() for init in folder.rglob("__init__.py")
             if not (name == "privflow" and init.parent.relative_to(folder).parts[:1] == ("flows",))}
    data_only = {name for name in config["package-data"] if name not in found}  # folders of data files
    assert all((ROOT / "components" / Path(*name.split(".")[1:])).is_dir() for name in data_only)
    assert not any((ROOT / "components" / Path(*name.split(".")[1:]) / "__init__.py").exists() for name in data_only)
    assert set(config["packages"]) == found | data_only
    assert config["package-dir"] == {"privflow": "components", "privflow.flows": "flows"}
