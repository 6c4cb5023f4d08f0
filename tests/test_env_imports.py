"""The env package imports without a cycle: each module loads first in a fresh interpreter, and no
module imports (at the top or inside a function) one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import projected_grpo.env

ENV = Path(projected_grpo.env.__file__).parent
MODULES = sorted(f"projected_grpo.env.{p.stem}" for p in ENV.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def env_imports(module: str) -> set[str]:
    """The env modules that `module` imports anywhere in its source (function-level imports too)."""
    tree = ast.parse((ENV / f"{module.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in MODULES and n != module}
    return found


def test_no_import_cycle_in_env():
    graph = {m: env_imports(m) for m in MODULES}
    assert graph["projected_grpo.env.grader"] and graph["projected_grpo.env.problems"]  # the parser sees imports
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == "active":
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(m):] + [m])}")
        if state.get(m) == "done":
            return
        state[m] = "active"
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])
