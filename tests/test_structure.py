"""The shape of the package: short functions, no import cycles, keyword calls, one owner per
on-disk layout. Static checks over the source; no Ray."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ganrec_dist"
FILES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 80


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _trees():
    return {_module(p): ast.parse(p.read_text()) for p in FILES}


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{_module(p)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for p in FILES
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long


def _imports(tree: ast.AST, module: str, modules: set[str]) -> set[str]:
    """The package's modules that ``module`` imports, at any depth of its code."""
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in modules and n != module}
    return out


def test_no_two_modules_import_each_other():
    trees = _trees()
    graph = {m: _imports(t, m, set(trees)) for m, t in trees.items()}
    cycles = []

    def visit(node, path):
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif len(path) < len(graph):
                visit(nxt, path + [nxt])

    for start in graph:
        visit(start, [start])
    assert not cycles, cycles[:5]


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_calls_with_more_than_four_arguments_name_them():
    """Our own functions, that is: printf-style logging and C APIs (FAISS) take no keywords."""
    trees = _trees().values()
    ours = {
        node.name
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    crowded = [
        f"{_module(p)}:{node.lineno} {_called_name(node)}"
        for p in FILES
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call)
        and _called_name(node) in ours
        and len([a for a in node.args if not isinstance(a, ast.Starred)]) > 4
    ]
    assert not crowded


LAYOUT_NAMES = re.compile(
    r"[\"'](checkpoint|model\.pt|meta\.json|manifest\.json|items\.parquet|users\.parquet|"
    r"config\.yaml|eval\.json|history\.(csv|png)|sequences\.npz|index\.faiss|ray_results|"
    r"gate\.json|frontier\.(json|png)|sweep\.json)[\"']"
    # a directory joined as a path: RUN/cold_start/...
    r"|[\"']cold_start/|[\"']cold_start[\"']\s*/"
)


def test_only_the_layout_module_spells_the_layouts():
    spelled = [
        f"{_module(p)}:{i}: {line.strip()}"
        for p in FILES
        if p.name != "layout.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if LAYOUT_NAMES.search(line)
    ]
    assert not spelled


# The stages, bottom to top: a module imports only from its own stage or those below it.
STAGES = ["core", "data", "model", "retrieval", "training", "inference", "evaluation"]
STAGES += ["operations"]
LEVEL = {**{s: i for i, s in enumerate(STAGES)}, "bench": STAGES.index("operations")}


def _level(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package's __init__: its version, nothing else
        return 0
    if parts[1] == "__main__":
        return LEVEL["operations"]
    return LEVEL[parts[1]]


def test_every_module_belongs_to_a_stage_with_a_docstring():
    loose = [
        _module(p) for p in FILES if p.parent == PACKAGE and p.stem not in ("__init__", "__main__")
    ]
    assert not loose, f"modules outside the stages: {loose}"
    stages = {p.parent.name for p in FILES if p.parent != PACKAGE}
    assert stages == set(LEVEL)
    for stage in stages:
        assert ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text())), stage


def test_imports_only_go_down_the_stages():
    trees = _trees()
    upward = [
        f"{module} -> {imported}"
        for module, tree in trees.items()
        for imported in sorted(_imports(tree, module, set(trees)))
        if _level(imported) > _level(module)
    ]
    assert not upward, upward


def test_the_installed_version_is_the_package_version():
    import importlib.metadata

    import ganrec_dist

    assert importlib.metadata.version("ganrec-dist") == ganrec_dist.__version__
