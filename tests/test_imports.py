"""No import cycle between rbdc's modules: the graph of module-level imports (what runs when a module is first
imported) is acyclic, and every module imports in a fresh interpreter. In-function imports are left out of the graph:
they run later, and each one names why it is there (tests/test_imports.py::test_in_function_imports_are_the_known_ones).
"""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rbdc"
# In-function imports of rbdc's own modules that stay, each with its reason in a comment on its line: they defer a
# heavy or optional import (scipy, mmdet) to the command that needs it, or they would close a module-level cycle.
IN_FUNCTION = {
    "rbdc/data/for_recipe.py": 1,  # the recipe imports rbdc.data (DataKeys' checks)
    "rbdc/nets/models.py": 1,  # the variant registry builds on scaled()
    "rbdc/report/commands.py": 3,  # scipy, mmdet: deferred to --report
    "rbdc/report/ladder.py": 1,  # its sections and figures import this module's types
    "rbdc/report/study.py": 1,  # its sections and figures import this module's types
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level(tree: ast.Module):
    """The statements a module runs on import: its body, into if/try blocks, not into TYPE_CHECKING or functions."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            todo += [n for field in ("body", "orelse", "finalbody") for n in getattr(node, field, [])]
            todo += [n for h in getattr(node, "handlers", []) for n in h.body]
        else:
            yield node


def _targets(name: str, node) -> list[str]:
    """The rbdc modules an import statement of module ``name`` loads (a package's ``__init__`` for a name in it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "rbdc"]
    if not isinstance(node, ast.ImportFrom):
        return []
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    base = node.module or ""
    if node.level:
        package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        base = f"{package}.{base}" if base else package
    if base.split(".")[0] != "rbdc":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {t for node in _top_level(tree) for t in _targets(name, node) if t != name} & set(MODULES)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_module_level_import_graph_is_acyclic():
    graph = import_graph()
    assert sum(map(len, graph.values())) > 200  # the graph is read, not empty
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle at module level: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_in_a_fresh_interpreter():
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name.split('.')[0] == 'rbdc':\n"
        "            failed.append(f'{name}: {e}')\n"  # an optional stack (mmdet, submitit) may be missing
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr[-2000:]


def test_in_function_imports_are_the_known_ones():
    """Each in-function import of an rbdc module is one of :data:`IN_FUNCTION`'s, with its reason on its line."""
    found = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = path.read_text(encoding="utf-8").splitlines()
        nodes = {
            id(node): node
            for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn)
            if _targets(name, node)
        }
        for node in nodes.values():
            key = str(path.relative_to(REPO))
            found[key] = found.get(key, 0) + 1
            assert "#" in lines[node.lineno - 1], f"{key}:{node.lineno}: say why this import is in a function"
    assert found == IN_FUNCTION, "hoist an in-function import to the module's top unless it closes a cycle"
