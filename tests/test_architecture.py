"""The package layout: imports point one way (catvae → callbacks → estimators), no cycles, no hidden imports.

The import graph is read from the source (``ast``), so these tests see every import, also those inside
functions. ``python -m pytest tests/test_architecture.py -q`` is the check behind docs/architecture.md. The AST
scan for private framework attributes outside ``callbacks/compat.py`` lives with the compat module's own tests
(``tests/test_compat.py``), next to the per-attribute version checks it complements.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("catvae", "callbacks", "estimators")
#: which top-level packages each package may import (the design: catvae → callbacks → estimators)
ALLOWED = {"estimators": {"estimators"}, "callbacks": {"callbacks", "estimators"},
           "catvae": {"catvae", "callbacks", "estimators"}}
#: third-party imports that estimators/ must not make (pure PyTorch)
FORBIDDEN_IN_ESTIMATORS = ("lightning", "torchmetrics", "jsonargparse")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported project module, line, inside a function)`` of every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    local_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                out.append((target, node.lineno, node.lineno in local_lines))
    return out


def _graph():
    modules = _modules()
    return modules, {name: _imports(name, path, modules) for name, path in modules.items()}


def test_imports_point_one_way_between_the_packages():
    _, graph = _graph()
    wrong = [(m, t, line) for m, edges in graph.items() for t, line, _ in edges
             if t.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong, wrong
    for name, path in _modules().items():
        if name.startswith("estimators"):
            text = path.read_text()
            assert not [f for f in FORBIDDEN_IN_ESTIMATORS if f"import {f}" in text or f"from {f}" in text], name


def test_no_import_cycles():
    """Between modules (a package's ``__init__`` importing its own submodules is not a cycle)."""
    _, graph = _graph()
    edges = {m: {t for t, _, _ in ts if t != m and not m.startswith(t + ".") and not t.startswith(m + ".")}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_function_local_imports_of_the_project():
    """Every import of the project's own modules is at module level, where a reader sees it."""
    _, graph = _graph()
    local = [(m, t, line) for m, edges in graph.items() for t, line, inside in edges if inside]
    assert not local, local


def test_config_error_has_one_import_path():
    """``ConfigError`` (exit 2, one line) is imported from ``estimators.base`` everywhere (``catvae.errors`` re-exports
    it for users; ``estimators.base`` itself takes it from the module that defines it)."""
    exempt = {ROOT / "catvae" / "errors.py", ROOT / "estimators" / "base.py"}
    others = []
    for path in sorted(p for d in ("catvae", "callbacks", "estimators", "tests") for p in (ROOT / d).rglob("*.py")):
        if path in exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == "ConfigError" for a in node.names):
                module = "." * node.level + (node.module or "")
                if module not in ("estimators.base", ".base"):
                    others.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {module}")
    assert not others, "import ConfigError from estimators.base:\n" + "\n".join(others)


def test_models_import_nothing_from_callbacks():
    """The benchmarks' models, tasks and data (``catvae/benchmarks/``) and the task base (``catvae/core.py``, but for
    the compat accessors) do not import ``callbacks/``: a callback is wired by a config or the CLI, and what one
    benchmark needs alone (the VAE's image grids) lives in its package."""
    _, graph = _graph()
    found = [(m, t, line) for m, edges in graph.items() if m.startswith("catvae.benchmarks") or m == "catvae.core"
             for t, line, _ in edges if t.startswith("callbacks") and not (m == "catvae.core" and t == "callbacks.compat")]
    assert not found, found


def test_benchmark_lists_come_from_the_registry():
    """No list, tuple or set literal in the project or its tests names two benchmarks: the tools and tests read
    ``catvae.benchmarks.BENCHMARKS``, so a new benchmark is picked up everywhere by its registry entry."""
    from catvae.benchmarks import BENCHMARKS

    names = set(BENCHMARKS) | {b.configs for b in BENCHMARKS.values()}
    exempt = ROOT / "catvae" / "benchmarks" / "__init__.py"
    found = []
    for path in sorted(p for d in (*PACKAGES, "tests") for p in (ROOT / d).rglob("*.py") if p != exempt):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                named = {e.value for e in node.elts if isinstance(e, ast.Constant)} & names
                if len(named) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(named)}")
    assert not found, found


def test_argument_checks_are_declared_not_read_from_the_callers_frame():
    """One mechanism for constructor checks: a class declares ``arg_constraints`` and
    ``estimators.constraints.CheckedInit`` checks them before ``__init__`` runs; nothing reads a caller's stack
    frame (``inspect.currentframe``, ``f_back``, ``f_locals``) to find the arguments."""
    found = []
    for path in sorted(p for d in PACKAGES for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("currentframe", "f_back", "f_locals"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not found, found


def test_every_task_and_data_module_checks_its_arguments_before_init(monkeypatch):
    """Each registered benchmark's task and DataModule is a ``CheckedInit``: every argument it or a base declares a
    rule for (``steps_per_epoch`` is ``StepsDataModule``'s), given a value no rule accepts, is a ``ConfigError``
    naming it, raised before the class's own ``__init__`` body runs; the signature LightningCLI reads is the
    class's own."""
    import inspect

    import pytest

    import estimators
    from catvae.benchmarks import BENCHMARKS
    from estimators.base import ConfigError
    from estimators.constraints import CheckedInit

    classes = [c for b in BENCHMARKS.values() for c in (b.task_class, b.data_class)]
    body_ran = []
    assert len(classes) == 2 * len(BENCHMARKS) and all(issubclass(c, CheckedInit) for c in classes), classes
    for cls in classes:
        parameters = inspect.signature(cls.__init__).parameters
        rules = cls.all_constraints()
        assert cls.arg_constraints and set(rules) <= set(parameters), cls
        required = {"estimator": estimators.build("st")} if "estimator" in parameters else {}
        monkeypatch.setattr(CheckedInit, "__setattr__", lambda self, *a, cls=cls: body_ran.append((cls, a)),
                            raising=False)
        for name in rules:
            with pytest.raises(ConfigError, match=name):
                cls(**{**required, name: object()})
        monkeypatch.undo()
    assert not body_ran, body_ran[:3]
