"""The house: the product never imports the exchange simulator, and no module imports itself in a
circle. Static checks over the source plus a fresh interpreter: they need no server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["egis/db", "egis/exchanges", "egis/rules", "activities", "workflows", "worker.py"]
"""What runs in production. The simulator (egis/simulator) is for tests, the demo and benchmarks."""


def modules(paths: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in paths:
        base = ROOT / entry
        files = [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))
        for path in files:
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (a lazy import counts too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_product_never_imports_the_simulator() -> None:
    product = modules(PRODUCT)
    static = {
        name: sorted(i for i in imports_of(path) if i.startswith("egis.simulator")) for name, path in product.items()
    }
    assert {name: found for name, found in static.items() if found} == {}
    code = (
        "import importlib, sys\n"
        f"for name in {sorted(product)!r}: importlib.import_module(name)\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('egis.simulator'))))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "", f"importing the product loaded {loaded.stdout.strip()}"


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dependency in sorted(graph[module]):
            if state.get(dependency) == 1:
                circles.append([*stack[stack.index(dependency) :], dependency])
            elif dependency not in state:
                visit(dependency)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return circles


def test_no_import_circles() -> None:
    everything = modules(["egis", "activities", "workflows", "worker.py", "starter.py"])
    graph = {name: {i for i in imports_of(path) if i in everything and i != name} for name, path in everything.items()}
    circles = find_circles(graph)
    assert circles == [], "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_checks_would_catch_a_violation(tmp_path: Path) -> None:
    """The detectors themselves: a lazy import of the simulator, and a circle (egis/cli.py and
    worker.py once imported each other for hard_exit)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from egis.simulator.core import SimulatorCore\n")
    assert "egis.simulator.core" in imports_of(bad)
    assert find_circles({"egis.cli": {"worker"}, "worker": {"egis.cli"}}) == [["egis.cli", "worker", "egis.cli"]]
    assert find_circles({"a": {"b"}, "b": set()}) == []
