"""The layer rule of docs/architecture.md, checked on the source (imports inside functions included).

``commands`` -> ``verify`` / ``evaluation`` -> ``export`` -> ``training`` / ``runtime`` -> ``features`` /
``modeling`` / ``data`` / ``metrics`` / ``detection`` -> ``conventions``; anything may use ``graph_tools``;
``graph_tools`` imports nothing of roiseg and no torch; ``runtime`` reaches no torch, ``roiseg.modeling`` or
``roiseg.training``, not even through what it imports; no cycles.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Rank of each roiseg package: a module may import only modules of the same or a lower rank.
RANKS: dict[str, int] = {
    "roiseg.cli": 6, "roiseg.__main__": 6, "roiseg.commands": 6, "roiseg.demo": 6,
    "roiseg.verify": 5, "roiseg.evaluation": 5,
    "roiseg.export": 4,
    "roiseg.training": 3, "roiseg.runtime": 3,
    "roiseg.features": 2, "roiseg.modeling": 2, "roiseg.data": 2, "roiseg.synthetic": 2, "roiseg.metrics": 2,
    "roiseg.detection": 2,
    "roiseg.conventions": 1, "roiseg.errors": 1, "roiseg.utils": 1, "roiseg": 1,
}
LIGHT_PACKAGES: tuple[str, ...] = ("roiseg.runtime",)
"""Packages that run a fused model: their transitive imports reach none of :data:`HEAVY`."""
HEAVY: tuple[str, ...] = ("torch", "torchvision", "roiseg.modeling", "roiseg.training")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("roiseg", "graph_tools"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


@functools.cache
def _imports(path: Path, module: str) -> frozenset[str]:
    """Every module named by an import statement anywhere in the file (relative ones resolved; parsed once)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0) or None]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return frozenset(out)


def _rank(module: str) -> int:
    best = max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)
    return RANKS[best]


MODULES = _modules()
EDGES = {m: {i for i in _imports(p, m) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_graph_tools_imports_nothing_of_roiseg_and_no_torch():
    bad = [(m, i) for m, p in MODULES.items() if m.startswith("graph_tools")
           for i in _imports(p, m) if i.split(".")[0] in ("roiseg", "torch", "torchvision")]
    assert bad == []
    code = "import sys, graph_tools; print(sorted(m for m in sys.modules if m.split('.')[0] in ('roiseg', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_roiseg_package_has_a_rank():
    packages = {".".join(m.split(".")[:2]) for m in MODULES if m.startswith("roiseg.")}
    assert sorted(p for p in packages if p not in RANKS) == []
    assert not (ROOT / "roiseg" / "deploy").exists()  # the flat package the layers replaced


def _reach(module: str) -> set[str]:
    """Every module (roiseg's and third-party top-level names) ``module`` imports, transitively; a package's
    ``__init__`` counts for each of its submodules, as Python runs it."""
    seen, todo, external = set(), [module], set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        for name in _imports(MODULES[m], m):
            if name in MODULES:
                todo.append(name)
            elif name.split(".")[0] not in ("roiseg", "graph_tools"):
                external.add(name.split(".")[0])
    return seen | external


@pytest.mark.parametrize("package", LIGHT_PACKAGES)
def test_runtime_reaches_no_torch_modeling_or_training(package):
    """On the source: every import statement of every module runtime reaches (function-level ones included)."""
    bad = {m: sorted(h for h in HEAVY if any(r == h or r.startswith(h + ".") for r in _reach(m)))
           for m in MODULES if m == package or m.startswith(package + ".")}
    assert {m: h for m, h in bad.items() if h} == {}


def test_layers_run_one_way():
    upward = [f"{m} -> {i}" for m, deps in EDGES.items() if m.startswith("roiseg")
              for i in deps if i.startswith("roiseg") and _rank(i) > _rank(m)]
    assert upward == []


def test_no_import_cycles():
    packages = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    graph = {m: {d for d in deps if d not in packages} for m, deps in EDGES.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("limit_lines, limit_function", [(400, 60)])
def test_no_file_over_400_lines_and_no_function_over_60(limit_lines, limit_function):
    long_files = [str(p.relative_to(ROOT)) for p in MODULES.values() if len(p.read_text().splitlines()) > limit_lines]
    long_funcs = [
        f"{p.relative_to(ROOT)}:{n.name}" for p in MODULES.values() for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > limit_function
    ]
    assert long_files == [] and long_funcs == []


def test_the_longest_first_order_names_test_modules_that_exist():
    """conftest.LONGEST_FIRST orders the modules for the two test processes; a renamed module would drop out of it
    silently and run at its alphabetical place (the suite's wall time, docs/performance.md)."""
    from conftest import LONGEST_FIRST

    tests = Path(__file__).resolve().parent
    missing = [name for name in LONGEST_FIRST if not (tests / name).is_file()]
    assert not missing and len(set(LONGEST_FIRST)) == len(LONGEST_FIRST), missing
