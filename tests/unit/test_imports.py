"""
The package's import graph, read from the source: no module imports one
that imports it back, and the process engine (goophry_tx.process) imports
nothing of Redis, nor anything that imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import goophry_tx

PACKAGE = Path(goophry_tx.__file__).parent

# What the process engine may import of ours besides itself: the value
# objects it reports in (goophry_tx.task).
ALLOWED = {"goophry_tx", "goophry_tx.task"}
REDIS_CLIENTS = {"txredisapi", "hiredis"}


def _source(module: str) -> Path | None:
    """The file of one of our modules, or C{None} if C{module} is not ours."""
    parts = module.split(".")
    if parts[0] != "goophry_tx":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imports(module: str) -> set[str]:
    """Every module C{module}'s source imports, wherever the import statement is."""
    path = _source(module)
    assert path is not None, module
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            # "from goophry_tx.process import spawn" imports a module too.
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _source(f"{node.module}.{alias.name}") is not None
            )
    return found


def _modules() -> list[str]:
    """Every module of the package, by its dotted name."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def imported_by(module: str) -> set[str]:
    """What importing C{module} imports, following our own modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in _imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                if _source(name) is not None:
                    todo.append(name)
    return seen


def test_the_process_engine_imports_nothing_of_redis_or_of_its_users() -> None:
    imported = imported_by("goophry_tx.process.runner")
    assert "goophry_tx.process.spawn" in imported
    assert "goophry_tx.process.libc_spawn" in imported
    ours = {m for m in imported if _source(m) is not None}
    outside = {m for m in ours if m not in ALLOWED and not m.startswith("goophry_tx.process")}
    assert outside == set()
    assert {m for m in imported if m.split(".")[0] in REDIS_CLIENTS} == set()


def test_what_the_process_engine_imports_does_not_import_it_back() -> None:
    for module in sorted(ALLOWED):
        assert not any(m.startswith("goophry_tx.process") for m in imported_by(module)), module


def test_no_module_imports_one_that_imports_it_back() -> None:
    modules = _modules()
    assert {"goophry_tx.service", "goophry_tx.process.spawn"} <= set(modules)
    # The walk follows imports through modules: the service reaches Redis
    # through the consumer, among others.
    assert {"goophry_tx.consumer", "goophry_tx.redis"} <= imported_by("goophry_tx.service")
    circles = {m: sorted(imported_by(m) & set(modules)) for m in modules if m in imported_by(m)}
    assert circles == {}
