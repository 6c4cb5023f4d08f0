"""Issue 27: the package's folders show the stages, and no two modules import each other (directly or
through others), counting imports inside functions too; only annotations (`if TYPE_CHECKING:`) are
exempt. Read from the source with `ast`, not from the package's own code."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "projected_grpo"
STAGES = ("core", "directions", "training", "env", "interventions", "studies", "cli", "fast")
TOP = {"__init__.py", "config.py", "arms.py", "models.py", "errors.py", "jsonl.py", "atomic.py"}


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(("projected_grpo", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = p
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports anywhere, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found & known


def test_the_top_level_holds_only_shared_modules_and_the_stage_folders():
    assert {p.name for p in SRC.glob("*.py")} == TOP
    assert all((SRC / s / "__init__.py").is_file() for s in STAGES)


def test_no_import_cycle():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is not a cycle of stages: drop parent -> child
    graph = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
