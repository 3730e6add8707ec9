"""The private framework parts catvae uses (callbacks/compat.py): each still present in the installed versions, and
none used anywhere else."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
from conftest import ROOT

from callbacks import compat

FRAMEWORKS = ("lightning", "torch", "torchmetrics", "jsonargparse", "argparse", "tensorboard")
SOURCES = [p for d in ("catvae", "callbacks", "estimators") for p in sorted((ROOT / d).rglob("*.py"))]
COMPAT = ROOT / "callbacks" / "compat.py"


@pytest.mark.parametrize("entry", compat.PRIVATE, ids=lambda e: f"{e.owner}.{e.name}")
def test_each_private_attribute_catvae_uses_exists_in_the_installed_version(entry):
    entry.check()


def _override(entry: compat.Private):
    module, _, cls = entry.used_by.rpartition(".")
    return getattr(importlib.import_module(module), cls)


@pytest.mark.parametrize("entry", compat.OVERRIDDEN, ids=lambda e: f"{e.owner}.{e.name}")
def test_each_overridden_private_method_exists_with_the_arguments_the_override_takes(entry):
    entry.check()
    base = inspect.signature(getattr(entry.resolve(), entry.name)).parameters
    ours = inspect.signature(getattr(_override(entry), entry.name)).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in ours.values()):
        assert list(base) == list(ours), f"{entry.owner}.{entry.name} now takes {list(base)}; {entry.used_by} {list(ours)}"
    else:
        positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert list(base)[: len(positional)] == positional, (entry, list(base))


def _own_names(trees) -> set[str]:
    """Names catvae defines: functions, classes, module-level names, attributes it assigns on ``self``/``cls``."""
    own = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                own.add(node.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in ("register_buffer", "register_parameter", "add_state") and node.args
                  and isinstance(node.args[0], ast.Constant)):
                own.add(node.args[0].value)
    return own


def _private_uses(path: Path, tree: ast.AST, own: set[str]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant)):
            name = node.args[1].value
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if any(part.startswith("_") and not part.startswith("__") for part in node.module.split(".")):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import ...")
        if isinstance(name, str) and name.startswith("_") and not name.startswith("__") and name not in own:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_private_framework_attribute_is_used_outside_the_compat_module():
    """An attribute ``_x`` that catvae does not define itself is a framework's: only callbacks/compat.py may touch it
    (the scan's own test: it finds the accessors' uses in compat.py itself)."""
    trees = {p: ast.parse(p.read_text()) for p in SOURCES}
    own = _own_names(trees.values())
    outside = [use for p, t in trees.items() if p != COMPAT for use in _private_uses(p, t, own)]
    assert not outside, "private framework attributes outside callbacks/compat.py:\n" + "\n".join(outside)
    inside = _private_uses(COMPAT, trees[COMPAT], own - {"_actions", "_get"})
    assert any("_last_global_step_saved" in use for use in inside) and any("_actions" in use for use in inside)


def test_every_override_of_a_private_framework_method_is_listed():
    listed = {(e.used_by, e.name) for e in compat.OVERRIDDEN}
    missing = []
    for path in SOURCES:
        if path.name == "__main__.py":  # an entry point: importing it runs it
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for name, value in vars(cls).items():
                if not (name.startswith("_") and not name.startswith("__") and inspect.isfunction(value)):
                    continue
                bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in FRAMEWORKS and name in vars(b)]
                if bases and (f"{module.__name__}.{cls.__name__}", name) not in listed:
                    missing.append(f"{module.__name__}.{cls.__name__}.{name} overrides {bases[0].__module__}."
                                   f"{bases[0].__name__}")
    assert not missing, "add to callbacks.compat.OVERRIDDEN:\n" + "\n".join(missing)
