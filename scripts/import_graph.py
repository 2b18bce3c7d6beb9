"""The package's import graph, read from the source with `ast` (nothing is imported), its cycles,
and a mermaid picture of it written into docs/architecture.md.

    python scripts/import_graph.py            # rewrite the picture in docs/architecture.md
    python scripts/import_graph.py --check    # exit 1 if the picture is stale or there is a cycle

What counts as an edge A -> B: an `import` statement in module A, at the top level or inside a
function (a lazy import still runs A's code against B's and forms a cycle as well), naming module
B of the package. `from pkg import name` is an edge to `pkg.name` when that is a module, else to
`pkg` (its `__init__`). Imports under `if TYPE_CHECKING:` are not edges (they never run). The
implicit import of a module's parent packages (importing `a.b.c` first runs `a/__init__` and
`a/b/__init__`) is not an edge either: a package's `__init__` is the façade that re-exports its
modules, so counting it would make every module depend on all of its siblings.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mambavision_jax"
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"


def modules(package_dir: Path = ROOT / PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package."""
    out = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = list(f.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, skipping `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(package_dir: Path = ROOT / PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}."""
    mods = modules(package_dir)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    targets.append(full if full in mods else base)
            for t in targets:
                while t and t not in mods:  # `import a.b.c` of a non-module attribute path
                    t = t.rpartition(".")[0]
                if t and t != name and t.split(".")[0] == PACKAGE:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# Drawn as one node each: the model's subpackages and the data / training internals. Modules that
# sit in another layer than their package (commands, readers used by the weights layer, package
# façades) keep their own node, so the picture has no cycle where the modules have none.
COLLAPSED = ("models", "ops", "data", "train", "convert")
OWN_NODE = (
    "convert",  # the package's __init__: the public façade
    "convert.__main__",
    "data",
    "data.image_folder",
    "data.image_io",
    "data.make_folder_dataset",
    "data.make_seg_dataset",
    "train",
    "train.checkpoint",
    "train.loop",
)


def node(module: str) -> str:
    """The picture's node of a module: `convert.__main__`, `data.image_folder`, ... or its subpackage."""
    rest = module.split(".", 1)[1] if "." in module else "__init__"
    if rest in OWN_NODE:
        return rest + (".__init__" if rest in COLLAPSED else "")
    head = rest.split(".")[0]
    return head if head in COLLAPSED else rest


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between the picture's nodes (see `node`)."""
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(node(a), set())
        for b in targets:
            out.setdefault(node(b), set())
            if node(a) != node(b):
                out[node(a)].add(node(b))
    return out


def mermaid(graph: dict[str, set[str]]) -> str:
    """A mermaid flowchart of the part-to-part graph (an arrow: "imports")."""
    parts = layer_graph(graph)
    parts.pop("__init__", None)

    def name(n: str) -> str:  # mermaid ids: no dots
        return f'{n.replace(".", "_")}["{n}"]'

    lines = ["```mermaid", "flowchart TD"]
    for a in sorted(parts):
        for b in sorted(parts[a]):
            if b != "__init__":
                lines.append(f"  {name(a)} --> {name(b)}")
    lines.append("```")
    return "\n".join(lines)


def render(text: str, graph: dict[str, set[str]]) -> str:
    """`text` with the picture between the markers replaced."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC}: the markers {BEGIN} / {END} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    note = (
        "<!-- generated by scripts/import_graph.py from the package's imports (top-level and "
        "lazy); do not edit by hand -->"
    )
    return f"{head}{BEGIN}\n{note}\n{mermaid(graph)}\n{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="fail if the doc is stale or the graph has a cycle")
    args = p.parse_args(argv)
    graph = import_graph()
    found = cycles(graph)
    for c in found:
        print("import cycle:", " <-> ".join(c), file=sys.stderr)
    for c in cycles(layer_graph(graph)):
        print("a cycle in the picture (not between modules):", " <-> ".join(c), file=sys.stderr)
    text = DOC.read_text()
    new = render(text, graph)
    if args.check:
        if new != text:
            print(f"{DOC} is stale: run python scripts/import_graph.py", file=sys.stderr)
            return 1
        return 1 if found else 0
    DOC.write_text(new)
    print(f"wrote the import graph into {DOC} ({sum(map(len, graph.values()))} imports, {len(found)} cycles)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
