"""Importing this module makes the next ``import structlog`` skip rich (the CLI imports it first).

Only the command line installs it: a program that imports batchsub as a library keeps
structlog as it is.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader


class _StructlogWithoutRich:
    """Imports structlog as if rich were not installed: rich is most of structlog's import
    time, and start-up is paid by every run (bench/results.md section 10).

    structlog imports rich (``rich.traceback``, ``rich.pretty``) from its ``__init__`` only to
    offer rich-formatted exception tracebacks, a renderer batchsub never uses: batchsub logs no
    ``exc_info`` (library records are forwarded as messages). Without rich, structlog formats
    exceptions as plain tracebacks; every other output is the same. rich itself stays available
    (the progress bar imports it when it draws). Does nothing if structlog or rich is already
    imported when structlog is first imported; removes itself after that import.
    """

    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "structlog":
            return None
        sys.meta_path.remove(cls)
        if "rich" in sys.modules:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = cast("Loader", _HideRich(spec.loader))
        return spec


class _HideRich:
    """Wraps structlog's loader: ``import rich`` fails while structlog's modules execute."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # type: ignore[union-attr]
        sys.modules["rich"] = None  # type: ignore[assignment]
        try:
            self._loader.exec_module(module)
        finally:
            del sys.modules["rich"]


if "structlog" not in sys.modules and _StructlogWithoutRich not in sys.meta_path:
    sys.meta_path.insert(0, _StructlogWithoutRich)
