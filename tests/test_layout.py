"""The package layout's rules, read from the source: no import cycles inside nodex, the paper tooling on top
(nothing outside ``nodex.paper`` imports it), functions short enough to read, Hydra's public API only, a thin CLI
and one reader of ``result.json``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nodex"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "configs" in path.relative_to(PACKAGE).parts:
            continue
        name = ".".join(("nodex", *path.relative_to(PACKAGE).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The nodex modules that module ``name`` imports (anywhere in its body, lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package importing its own submodules re-exports them: not a cycle of concern
            if target and target != name and not target.startswith(name + "."):
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_nodex():
    assert _cycles(_graph()) == []


def test_only_the_paper_tooling_imports_the_paper_tooling():
    offenders = [m for m, deps in _graph().items() if not m.startswith("nodex.paper") and m != "nodex.cli"
                 and any(d.startswith("nodex.paper") for d in deps)]
    assert offenders == []


def test_functions_are_short():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_nodex_uses_only_hydras_public_api():
    """``hydra.main``, ``hydra.compose``, ``hydra.core.*``, ``hydra.errors``, ... never ``hydra._internal``, except
    Hydra's own core plugins (``hydra._internal.core_plugins``: the basic launcher and sweeper), which nodex's
    launchers extend the way every launcher plugin extends Hydra."""
    private = [f"{p.relative_to(PACKAGE)}: {line.strip()}" for p in PACKAGE.rglob("*.py")
               for line in p.read_text().splitlines()
               if "hydra._internal" in line and "hydra._internal.core_plugins" not in line]
    assert private == []


def test_the_cli_stays_thin_and_the_run_record_has_one_reader():
    """The console script is a dispatcher (at most 300 lines); ``result.json`` is parsed in :mod:`nodex.runs` only
    (``nodex.paper.reproduce`` is the paper tooling's own, on top)."""
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 300
    readers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if "result.json" in p.read_text() and "json.loads" in p.read_text()
                     and not p.is_relative_to(PACKAGE / "paper"))
    assert readers == ["runs.py"]


def _callers(name: str) -> set[str]:
    """The modules of nodex that call a function or method called ``name``."""
    found = set()
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    found.add(module)
    return found


def test_one_build_path_and_one_restore_path():
    """Models are built from a run config in one place (``build_run_model``: the trainer, eval, resume,
    ``nodex.build`` and ``nodex.load``), and checkpoints are opened and their weights loaded in one module."""
    assert _callers("build_model") == {"nodex.train.setup"}
    assert _callers("load_checkpoint") == {"nodex.train.checkpoint"}
    assert _callers("read_run_checkpoint") >= {"nodex.api", "nodex.train.evaluation", "nodex.train.resume"}
    model_loads = {m for m in _callers("load_state_dict")}
    assert model_loads == {"nodex.train.checkpoint", "nodex.train.run"}  # run.py: the optimizer's and scheduler's
