"""The layout's size rule (issue 32): no module in ``rbdc/`` over 400 lines and no function over 60 (counted by
``ast`` from ``def`` to its last line, docstring included), so each module has one job and each function reads at
once. A new long function fails here with its place and length; split it or say in review why not.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rbdc"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def long_modules(package: Path, limit: int = MAX_MODULE_LINES) -> dict[str, int]:
    lines = {str(p.relative_to(package.parent)): len(p.read_text().splitlines()) for p in package.rglob("*.py")}
    return {path: n for path, n in sorted(lines.items()) if n > limit}


def long_functions(package: Path, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found[f"{path.relative_to(package.parent)}:{node.lineno} {node.name}"] = n
    return found


def test_no_module_over_400_lines():
    assert long_modules(PACKAGE) == {}


def test_no_function_over_60_lines():
    assert long_functions(PACKAGE) == {}


def test_the_counters_see_a_long_module_and_a_long_function(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))  # def line + 60 = 61 lines
    (package / "long.py").write_text(f"def f():\n{body}\n" + "\n" * 340)
    (package / "short.py").write_text("def g():\n    return 1\n")
    assert long_functions(package) == {"pkg/long.py:1 f": 61}
    assert long_modules(package) == {"pkg/long.py": 401}
    assert long_modules(package, limit=401) == {} and long_functions(package, limit=61) == {}
