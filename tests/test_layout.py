"""Layout rules for the `sweep` package: file size, module docstrings, and no import cycles.

The checks read the source with `ast` only (nothing under sweep/ is imported, so no torch), and count every
import, including those inside functions. The layer order itself is import-linter's contract in
pyproject.toml (`make lint`); this file catches cycles the contract allows, such as two modules of one layer.

From a shell, `python tests/test_layout.py` prints the cycles (exit 1 if any), and
`python tests/test_layout.py --graph` prints every module's imports of other sweep modules, with lines.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sweep"
MAX_LINES = 400

# (importing module, imported module) -> the lines of the importing file that make that edge.
Graph = dict[str, dict[str, list[int]]]


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name; `pkg/x/__init__.py` is module `pkg.x`."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def namespace_packages(root: Path = ROOT, package: str = PACKAGE) -> set[str]:
    """Directories under the package that hold modules but no `__init__.py` (implicit namespace packages)."""
    names = set()
    for path in (root / package).rglob("*"):
        is_dir = path.is_dir() and "__pycache__" not in path.parts
        if is_dir and not (path / "__init__.py").exists() and any(path.rglob("*.py")):
            names.add(".".join(path.relative_to(root).parts))
    return names


def _base_of_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name a `from ...name import` in `module` refers to."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    if name:
        parts.append(name)
    return ".".join(parts)


def _imported(
    node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]
) -> Iterator[tuple[str, str | None]]:
    """(name as written, module depended on or None if it names none) for one import of the package."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                yield alias.name, alias.name if alias.name in modules else None
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = _base_of_relative(module, is_package, node.level, node.module)
        else:
            base = node.module or ""
        if base != PACKAGE and not base.startswith(PACKAGE + "."):
            return
        for alias in node.names:
            # `from sweep.x import y` depends on the submodule sweep.x.y when there is one, else on sweep.x.
            submodule = f"{base}.{alias.name}"
            if submodule in modules:
                yield submodule, submodule
            else:
                yield submodule, base if base in modules else None


def _walk_imports(root: Path, package: str) -> Iterator[tuple[str, Path, int, str, str | None]]:
    """(module, file, line, name as written, module depended on or None) for every import of the package."""
    modules = module_files(root, package)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            for written, target in _imported(node, name, is_package, modules):
                yield name, path, node.lineno, written, target


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    """Each module's imports of other modules of the package, with the lines that make them."""
    graph: Graph = {name: {} for name in module_files(root, package)}
    for name, _path, line, _written, target in _walk_imports(root, package):
        if target and target != name:
            graph[name].setdefault(target, []).append(line)
    for edges in graph.values():
        for target, lines in edges.items():
            edges[target] = sorted(set(lines))
    return graph


def unresolved_imports(root: Path = ROOT, package: str = PACKAGE) -> list[str]:
    """Imports of package names that are no module (a removed module, or a name not in a namespace dir)."""
    namespaces = namespace_packages(root, package)
    return [
        f"{path.relative_to(root)}:{line}: {written}"
        for _name, path, line, written, target in _walk_imports(root, package)
        if target is None and written not in namespaces
    ]


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(components)


def cycles(graph: Graph) -> list[list[str]]:
    """The components of more than one module: each one holds at least one import cycle."""
    return [component for component in strongly_connected(graph) if len(component) > 1]


def _shortest_cycle(graph: Graph, component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as a list of modules (first repeated)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # unreachable for a component of 2+ modules


def describe(graph: Graph, component: list[str], root: Path = ROOT) -> str:
    """A component's modules and one shortest cycle in it, each import of the cycle with its file:line."""
    modules = module_files(root)
    cycle = _shortest_cycle(graph, component)
    lines = [f"cycle among {len(component)} modules: {', '.join(component)}", "  " + " -> ".join(cycle)]
    for source, target in itertools.pairwise(cycle):
        numbers = ",".join(map(str, graph[source][target]))
        lines.append(f"    {modules[source].relative_to(root)}:{numbers}: {source} imports {target}")
    return "\n".join(lines)


def test_no_module_is_longer_than_the_limit():
    too_long = {}
    for path in module_files().values():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_LINES:
            too_long[str(path.relative_to(ROOT))] = count
    assert not too_long, f"files over {MAX_LINES} lines (split them): {too_long}"


def test_every_module_has_a_docstring_whose_first_line_is_a_sentence():
    bad = {}
    for path in module_files().values():
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        first = docstring.strip().splitlines()[0].strip() if docstring and docstring.strip() else ""
        if not first:
            bad[str(path.relative_to(ROOT))] = "no module docstring"
        elif first.upper().startswith("TODO") or not first.endswith("."):
            bad[str(path.relative_to(ROOT))] = f"first line is not a sentence ending in '.': {first!r}"
    assert not bad, "module docstrings:\n" + "\n".join(f"  {path}: {why}" for path, why in bad.items())


def test_there_is_no_import_cycle_between_sweep_modules():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(
        describe(graph, component) for component in found
    )


def test_every_import_of_sweep_names_an_existing_module():
    # An import of a removed module would drop out of the graph above and hide a cycle.
    missing = unresolved_imports()
    assert not missing, "imports of sweep names that are no module:\n" + "\n".join(f"  {m}" for m in missing)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_graph_resolves_submodules_relative_imports_and_imports_inside_functions(tmp_path):
    _write(
        tmp_path,
        {
            "sweep/__init__.py": "",
            "sweep/a.py": "import sweep.b\n",
            "sweep/b.py": "def f():\n    from sweep.c import x\n",
            "sweep/c/__init__.py": "from . import d\nfrom .e import thing\n",
            "sweep/c/d.py": "from ..a import name\n",
            "sweep/c/e.py": "import os\n",
            "sweep/ns/f.py": "from sweep.ns import f, g\nfrom sweep import a\nimport sweep.ns\n",
            "sweep/ns/h.py": "from sweep.gone import x\nfrom sweep.c import d\n",
        },
    )
    graph = import_graph(tmp_path)
    assert graph == {
        "sweep": {},
        "sweep.a": {"sweep.b": [1]},
        "sweep.b": {"sweep.c": [2]},
        "sweep.c": {"sweep.c.d": [1], "sweep.c.e": [2]},
        "sweep.c.d": {"sweep.a": [1]},
        "sweep.c.e": {},
        "sweep.ns.f": {"sweep.a": [2]},
        "sweep.ns.h": {"sweep.c.d": [2]},
    }
    component = ["sweep.a", "sweep.b", "sweep.c", "sweep.c.d"]
    assert cycles(graph) == [component]
    assert _shortest_cycle(graph, component) == [*component, "sweep.a"]
    assert namespace_packages(tmp_path) == {"sweep.ns"}
    assert unresolved_imports(tmp_path) == ["sweep/ns/f.py:1: sweep.ns.g", "sweep/ns/h.py:1: sweep.gone.x"]


def main(argv: list[str]) -> int:
    graph = import_graph()
    if "--graph" in argv:
        for source, edges in graph.items():
            for target, numbers in sorted(edges.items()):
                print(f"{source} -> {target} (l.{','.join(map(str, numbers))})")
    for missing in unresolved_imports():
        print(f"unresolved import: {missing}")
    found = cycles(graph)
    for component in found:
        print(describe(graph, component))
    print(f"{len(found)} import cycle(s) among {len(graph)} modules of {PACKAGE}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
