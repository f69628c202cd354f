"""No import cycles anywhere in mtl_suite, except through `if TYPE_CHECKING:` blocks (never run).

Function-level (lazy) imports count: a lazy import only moves a cycle to the first call, where it fails or half-
initialises a module just the same, and it hides a layering error (a lower layer reaching up). The graph comes from
the syntax trees, so the check needs no heavy import and sees code paths no test runs."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mtl_suite"
ROOT = PACKAGE.name  # "mtl_suite"


# --- the graph -----------------------------------------------------------------------------------------------------

def module_name(path: Path, package_dir: Path = PACKAGE) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, module level and inside functions and classes, but none under `if TYPE_CHECKING:`
    (its `else:` branch does run, so it counts)."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
            continue
        pending.extend(ast.iter_child_nodes(node))
    return found


def imports_of(source: str, module: str, is_package: bool, modules: set[str], root: str = ROOT,
               filename: str = "<unknown>") -> set[str]:
    """The modules of `root` that `module` imports. `from a.b import c` is a.b.c when that is a module, else a.b;
    a package stands for its __init__."""
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {target for target in targets
            if (target == root or target.startswith(root + ".")) and target != module}


def import_graph(package_dir: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}
    modules = set(paths)
    return {name: {target for target in imports_of(path.read_text(encoding="utf-8"), name,
                                                   path.name == "__init__.py", modules, package_dir.name, str(path))
                   if target in modules}
            for name, path in paths.items()}


# --- cycles --------------------------------------------------------------------------------------------------------

def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on deep chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """start -> ... -> start, fewest steps, staying inside one strongly connected component."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if child in within and child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")  # only called for components of two or more


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component (breaking it may leave another in the same component,
    which the next run reports), as [a, b, ..., a]."""
    return [_shortest_cycle(graph, component[0], set(component))
            for component in _strongly_connected(graph) if len(component) > 1]


def describe(cycles: list[list[str]], graph: dict[str, set[str]]) -> str:
    lines = []
    for cycle in cycles:
        component = next(c for c in _strongly_connected(graph) if cycle[0] in c)
        extra = f" (all tangled together: {', '.join(component)})" if len(component) > len(cycle) - 1 else ""
        lines.append(f"import cycle: {' -> '.join(cycle)}{extra}")
    return "\n".join(lines)


# --- the checks ----------------------------------------------------------------------------------------------------

def test_mtl_suite_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "mtl_suite.cli" in graph and "mtl_suite.cli.common" in graph["mtl_suite.cli.train"]
    cycles = find_cycles(graph)
    assert not cycles, describe(cycles, graph)


CLI_SHARED = {"mtl_suite.cli.common", "mtl_suite.cli.imaging_options"}


def test_cli_command_modules_import_only_the_shared_cli_modules():
    """cli/__init__ assembles the commands; a command module takes what it shares from cli/common.py (or
    cli/imaging_options.py), never from another command module."""
    graph = import_graph()
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in graph.items() if module.startswith("mtl_suite.cli.")
                   for target in targets if target.startswith("mtl_suite.cli") and target not in CLI_SHARED)
    assert not wrong, "\n".join(wrong)


def test_the_cycle_finder_finds_a_cycle_and_names_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert describe(find_cycles(graph), graph) == "import cycle: a -> b -> c -> a"
    two = {"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x", "y"}}
    assert sorted(map(tuple, find_cycles(two))) == [("a", "b", "a"), ("x", "y", "z", "x")]
    assert "all tangled together: x, y, z" not in describe(find_cycles(two), two)
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []  # a diamond is no cycle


def test_the_cycle_finder_reports_the_shortest_cycle_of_a_tangle():
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}}
    assert find_cycles(graph) == [["a", "b", "a"]]
    assert describe(find_cycles(graph), graph) == "import cycle: a -> b -> a (all tangled together: a, b, c)"


def test_imports_are_read_from_functions_but_not_from_type_checking_blocks():
    modules = {"pkg", "pkg.low", "pkg.high", "pkg.sub", "pkg.sub.leaf", "pkg.hint", "pkg.other"}
    source = '''
from __future__ import annotations
import os
from typing import TYPE_CHECKING
import pkg.low
from pkg.sub import leaf, SOME_NAME
from . import other

if TYPE_CHECKING:
    from pkg.hint import Hint
else:
    import pkg.high

def later():
    from pkg.sub.leaf import thing
    from .. import nothing_above_the_root
'''
    found = imports_of(source, "pkg.mod", False, modules, root="pkg")
    assert found == {"pkg.low", "pkg.sub.leaf", "pkg.sub", "pkg.other", "pkg.high"}, found
    assert "pkg.hint" not in found  # TYPE_CHECKING only


def test_a_cycle_through_a_lazy_import_is_found(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from toy.high import g\n    return g\n")
    (package / "high.py").write_text("from toy import low\n\ndef g():\n    return low\n")
    graph = import_graph(package)
    assert graph == {"toy": set(), "toy.low": {"toy.high"}, "toy.high": {"toy.low"}}
    assert describe(find_cycles(graph), graph) == "import cycle: toy.high -> toy.low -> toy.high"


# ARCHITECTURE.md's layers, top to bottom: a module may import its own layer or one below it, never one above.
LAYERS = [
    ("cli", "__main__"),
    ("workflows",),
    ("tuning",),
    ("tracking",),
    ("analysis",),
    ("serving",),
    ("training",),
    ("tasks",),
    ("models", "imaging", "data"),
    ("catalog", "config", "recipes", "errors", "interrupts", "io_utils", "cache", "paths", "output", "progress",
     "run_files", "__init__"),
]


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else "__init__"
    return next(rank for rank, names in enumerate(LAYERS) if part in names)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                  if layer_of(target) < layer_of(source))


def test_no_module_imports_a_layer_above_its_own():
    upward = upward_imports(import_graph())
    assert not upward, "imports pointing up ARCHITECTURE.md's layers:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import():
    assert upward_imports({"mtl_suite.training.fit": {"mtl_suite.tracking.runs"}}) == [
        "mtl_suite.training.fit -> mtl_suite.tracking.runs"]
    assert upward_imports({"mtl_suite.tracking.runs": {"mtl_suite.training.fit"}}) == []
