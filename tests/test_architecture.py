"""The shape of the house: imports point one way, and the library's users (experiments,
proofs, the docs) use its public names only.

Both checks read the source with `ast` (nothing is imported), so an import hidden inside a
function counts like one at the top of a module.
"""

import ast
import pathlib
import re

import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {
    "recurrax": ROOT / "src" / "recurrax",
    "experiments": ROOT / "experiments",
    "proofs": ROOT / "proofs",
}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for folder in PACKAGES.values():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported(module: str, path: pathlib.Path, node: ast.AST) -> list[str]:
    """The project modules an import statement names (the longest known prefix of each)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = module.split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # `from package import submodule` imports the submodule (and the package only if it
        # is not being imported already); `from module import name` imports the module.
        names = [f"{prefix}.{alias.name}" for alias in node.names]
        if not all(name in MODULES for name in names):
            names.append(prefix)
    found = []
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in MODULES:
            parts.pop()
        if parts:
            found.append(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body. Importing a submodule
    also imports its parent packages, except the packages the importer itself lives in
    (those are being imported already)."""
    graph = {}
    for module, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(module, path, node):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    parent = ".".join(parts[:i])
                    implicit = i < len(parts)
                    inside = module == parent or module.startswith(parent + ".")
                    if parent in MODULES and not (implicit and inside) and parent != module:
                        edges.add(parent)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm,
    iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, f"import cycles (imports inside functions included): {found}"


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_imports_neither_experiments_nor_proofs():
    graph = import_graph()
    wrong = {
        module: sorted(t for t in targets if not t.startswith("recurrax"))
        for module, targets in graph.items()
        if module.startswith("recurrax")
    }
    assert not {m: t for m, t in wrong.items() if t}


def _reachable(graph: dict[str, set[str]], module: str) -> set[str]:
    """The modules `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_lower_tiers_import_nothing_above_them():
    """The mixer interface is the bottom; the layer base class reaches neither the
    Bidirectional wrapper, the convolution, the blocks nor the models; the checkpoint format
    knows nothing of the manager."""
    graph = import_graph()
    assert _reachable(graph, "recurrax._mixer") == set()
    assert _reachable(graph, "recurrax._bidirectional") == {"recurrax._mixer"}
    above = {
        "recurrax._bidirectional",
        "recurrax._conv",
        "recurrax._block",
        "recurrax._model",
        "recurrax._config",
    }
    assert not _reachable(graph, "recurrax._layer") & above
    assert "recurrax._checkpoint_manager" not in _reachable(graph, "recurrax._checkpoint")


def test_configuration_and_training_know_no_concrete_mixer():
    """One registry: the registry sits on the mixer interface alone, and the model
    configuration and the optimiser groups reach the mixers through it, never by import."""
    graph = import_graph()
    assert _reachable(graph, "recurrax._registry") == {"recurrax._mixer"}
    concrete = {
        f"recurrax.{name}"
        for name in ("_lru", "_ssm", "_minrnn", "_rnn", "_rglru", "_selective_ssm")
    }
    for module in ("recurrax._config", "recurrax._param_groups", "recurrax._optimizer"):
        assert not _reachable(graph, module) & concrete, module


_PRIVATE = re.compile(r"\brecurrax\._\w+|\bfrom recurrax import\b[^\n]*\b_\w+")


def _users() -> list[pathlib.Path]:
    files = [p for name in ("experiments", "proofs") for p in sorted(PACKAGES[name].rglob("*.py"))]
    files += sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
    return files


def private_names(text: str, suffix: str) -> list[str]:
    """The private recurrax names a Python file imports or reads (`suffix` ".py"), or a
    markdown file mentions (anything else)."""
    if suffix != ".py":
        return [m for m in _PRIVATE.findall(text) if m != "recurrax.__version__"]
    private = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            private += [a.name for a in node.names if a.name.startswith("recurrax._")]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.startswith("recurrax._"):
                private.append(node.module)
            elif node.module == "recurrax":
                private += [a.name for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            value = node.value
            if isinstance(value, ast.Name) and value.id == "recurrax":
                private.append(f"recurrax.{node.attr}")
    return [p for p in private if p not in ("recurrax.__version__", "__version__")]


@pytest.mark.parametrize("path", _users(), ids=lambda p: str(p.relative_to(ROOT)))
def test_users_of_the_library_import_public_names_only(path):
    private = private_names(path.read_text(), path.suffix)
    assert not private, f"{path.relative_to(ROOT)} uses private recurrax names: {private}"


def test_the_private_name_check_finds_private_imports():
    source = (
        "import recurrax\nimport recurrax._scan as s\nfrom recurrax._lti import mimo_kernel\n"
        "from recurrax import LRU, _hidden\nx = recurrax._layer\ny = recurrax.__version__\n"
    )
    assert private_names(source, ".py") == [
        "recurrax._scan",
        "recurrax._lti",
        "_hidden",
        "recurrax._layer",
    ]
    text = "see `recurrax._scan.foo` and `recurrax.LRU`, version recurrax.__version__"
    assert private_names(text, ".md") == ["recurrax._scan"]
