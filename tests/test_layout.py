"""The package's shape holds: no import cycle, nothing imports the CLI, every module imports on
its own, and no module grows past 600 lines (STYLE.md: small modules with one job)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PACKAGE = REPO / "batchsub"
MAX_LINES = 600


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``name`` imports anywhere in it (lazy imports included).

    Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first: those count too, except
    the packages ``name`` itself is in, which Python has begun to import before it. A name
    taken from a package's ``__init__`` (not a submodule) is a use of that ``__init__``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = set(_ancestors(package)) | {package}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            targets = [module for module in submodules if module in modules]
            if len(targets) < len(submodules):  # a name its __init__ (or module) defines
                found.add(base)
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
                found.update(a for a in _ancestors(target) if a not in own)
    found.discard(name)
    return {module for module in found if module in modules}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    assert cycles(import_graph()) == []


def test_nothing_imports_the_cli_but_main() -> None:
    importers = sorted(name for name, deps in import_graph().items() if "batchsub.cli" in deps)
    assert importers == ["batchsub.__main__"]


def test_no_module_is_over_600_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_names().items()}
    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


# Each module is imported by a child forked from an interpreter that has imported nothing of
# batchsub (only the libraries it uses, for speed): a module that works only when another of
# ours was imported first fails there, with its traceback.
_IMPORT_EACH = """
import importlib, os, sys, traceback
for library in ("aiohttp", "aiosqlite", "asyncpg", "aio_pika", "orjson", "pydantic",
                "pydantic_settings", "structlog", "yarl", "watchfiles", "prometheus_client"):
    importlib.import_module(library)
assert not any(name.startswith("batchsub") for name in sys.modules)
failed = []
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name + ": " + output)
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    names = [name for name in module_names() if name != "batchsub.__main__"]  # it runs the CLI
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *names],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
