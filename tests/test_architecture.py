"""The package's layers import only downward, and no module-level import circle exists.

The layers are those of ARCHITECTURE.md, top first. A module may import its own package, any
lower layer and the base helpers (``medlens._io``, ``medlens._table``, ``medlens`` itself), never
a higher layer or a peer of its own layer. Imports inside functions count too: they run
upward just the same, only later.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medlens"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "ARCHITECTURE.md"

# Top first; names on one line are peers (neither imports the other).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__",),
    ("cli",),
    ("commands",),
    ("report",),
    ("workflows",),
    ("evaluate", "serve"),
    ("engine",),
    ("inference",),
    ("metrics",),
    ("data",),
    ("models", "explain"),
)
BASE = ("_io", "_table")  # helpers below every layer
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str | None:
    """``medlens.engine.train`` -> ``engine``; None for ``medlens`` itself and non-medlens modules."""
    parts = module.split(".")
    if parts[0] != "medlens" or len(parts) == 1:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every medlens import in ``path`` (relative ones resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    nodes = []
    if top_level_only:
        # Module-level statements, also inside if/try blocks, but not inside functions or classes.
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # read by type checkers only, never run: no circle at import time
            nodes.append(node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []) or [])
    else:
        nodes = list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from medlens import workflows`` imports the package medlens.workflows.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names
                      if module == "medlens" and ((SRC / alias.name).is_dir() or (SRC / f"{alias.name}.py").is_file())]
    return [(line, m) for line, m in found if m.split(".")[0] == "medlens"]


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {path.relative_to(SRC).parts[0].removesuffix(".py") for path in _sources()}
    unknown = sorted(packages - set(RANK) - set(BASE) - {"__init__"})
    assert not unknown, f"add {unknown} to LAYERS here and in ARCHITECTURE.md"


def test_imports_only_go_down_the_layers():
    upward = []
    for path in _sources():
        own = path.relative_to(SRC).parts[0].removesuffix(".py")
        if own not in RANK:
            continue
        for line, module in _imports(path, top_level_only=False):
            target = _package(module)
            if target is None or target == own or target in BASE:
                continue
            if target not in RANK or RANK[target] <= RANK[own]:
                upward.append(f"{path.relative_to(SRC.parent)}:{line} ({own}) imports {module}")
    assert not upward, "imports that go up (or sideways) a layer:\n" + "\n".join(upward)


def test_base_helpers_import_no_layer():
    for name in BASE:
        for line, module in _imports(SRC / f"{name}.py", top_level_only=False):
            assert _package(module) in BASE or module == "medlens", f"{name}.py:{line} imports {module}"


def test_no_module_level_import_cycle():
    """Module-level imports of medlens modules form no cycle (what ``python -c 'import X'`` would hit)."""
    modules = {_module_name(path): path for path in _sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for _, module in _imports(path, top_level_only=True):
            # ``from medlens.x import y`` may name a submodule y or an attribute of x: take the longest module.
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name:
                targets.add(module)
        graph[name] = targets
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("command", sorted(p.stem for p in (SRC / "commands").glob("*.py") if p.stem != "__init__"))
def test_each_command_module_imports_alone_and_light(command):
    """Imported first in a fresh interpreter, a command module loads with no circle and no heavy framework."""
    script = (f"import sys, medlens.commands.{command} as m\n"
              "print(sorted(x for x in ('torch', 'numpy', 'lightning', 'monai') if x in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_is_instant():
    """``medlens --help`` builds every command's parser: median of 5 under 0.1 s, no torch imported."""
    script = ("import sys, time\nstart = time.perf_counter()\nfrom medlens.cli import build_parser\n"
              "build_parser().format_help()\nprint(time.perf_counter() - start, 'torch' in sys.modules)")
    times = []
    for _ in range(5):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        seconds, torch_loaded = proc.stdout.split()
        assert torch_loaded == "False"
        times.append(float(seconds))
    assert sorted(times)[2] < 0.1, times


def test_architecture_doc_names_every_layer_in_order():
    """ARCHITECTURE.md's layer list is this test's: the doc cannot drift from what is enforced."""
    text = ARCHITECTURE.read_text()
    positions = []
    for names in LAYERS:
        for name in names:
            if name == "__main__":
                continue
            marker = "`cli.py`" if name == "cli" else f"`{name}/`"
            assert marker in text, f"ARCHITECTURE.md does not name the layer {marker}"
            positions.append(text.index(marker))
    assert positions == sorted(positions), "ARCHITECTURE.md lists the layers in another order than LAYERS"
