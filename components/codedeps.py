"""The code each stage loads: the import closure of its module inside privflow.

dvc.yaml lists these files as each stage's deps (privflow.project writes them), so plain
`dvc status` and `dvc repro` see every edit of code a stage runs, and no other: editing a
report template must not re-run `train`, which spends privacy budget.

Found statically, from the source (`ast`), not by watching what a run imports: an import
inside a function (torch only where a tensor is made) is code the stage can run all the
same. Also counted: the `__init__` of every package on the way to a module (Python runs
them), and the package files a module names in `PACKAGE_FILES` (its templates).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "privflow"
ROOT = Path(__file__).resolve().parent  # components/ in a checkout, site-packages/privflow installed
STAGES = ("fingerprint", "ingest", "validate", "encrypt", "pretrain", "train", "evaluate", "compress", "explain",
          "report")


def stage_module(stage: str) -> str:
    return f"{PACKAGE}.stages.{stage}"


def module_file(name: str) -> Path | None:
    """The source file of a privflow module or package, None when `name` is not one (an
    attribute, as in `from privflow.catalog import MODEL`)."""
    parts = name.split(".")[1:]
    if parts[:1] == ["flows"]:
        return None  # the orchestration layer: never a stage's code (tests/unit/test_layers.py)
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST) -> set[str]:
    """Every privflow module a source file imports, at any depth in the file."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _package_files(tree: ast.Module, folder: Path) -> set[Path]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PACKAGE_FILES" for t in node.targets):
            return {folder / name for name in ast.literal_eval(node.value)}
    return set()


@cache
def _direct(name: str) -> tuple[frozenset[str], frozenset[Path]]:
    """The privflow modules `name` imports (its parents included) and the package files it names."""
    path = module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules = {m for m in _imported(tree) if module_file(m) is not None}
    parts = name.split(".")
    modules.update(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
    return frozenset(modules - {name}), frozenset(_package_files(tree, path.parent))


@cache
def closure(name: str) -> frozenset[Path]:
    """Every file (module source or package file) that importing and running `name` may load."""
    seen, files, todo = set(), set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        modules, data = _direct(current)
        files.add(module_file(current))
        files.update(data)
        todo.extend(modules)
    return frozenset(files)


def stage_code(stage: str) -> list[str]:
    """A stage's code deps, as paths relative to the package's root, sorted."""
    return sorted(path.relative_to(ROOT).as_posix() for path in closure(stage_module(stage)))


def import_graph() -> dict[str, set[str]]:
    """Module -> the privflow modules it imports (parents excluded): for the layering checks."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT).with_suffix("")
        if relative.parts[0] == "flows":
            continue
        parts = [p for p in relative.parts if p != "__init__"]
        name = ".".join([PACKAGE, *parts])
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for m in _imported(tree) if module_file(m) is not None} - {name}
    return graph
