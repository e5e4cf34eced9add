"""Modules that are also the function they are named after: `edgekit.export(...)` and
`edgekit.export.ExportPipeline` both work.

Python binds a submodule to its package's attribute once anything imports it, so `edgekit.export`,
`edgekit.recommend`, `edgekit.targets` and `edgekit.bench` are modules whatever `edgekit.__getattr__` says.
Rather than let the import order decide what a caller gets, each such module makes itself callable,
delegating to its public function of the same role. `progress_log` is the other piece every public
function shares: its `progress=` parameter.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from typing import Any

from edgekit.errors import EdgekitError


class CallableModule(types.ModuleType):
    """A module whose call runs the function named by its `__edgekit_call__` attribute."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__dict__["__edgekit_call__"])(*args, **kwargs)


def make_callable(module_name: str, function: str) -> None:
    """Make the (already imported) module `module_name` callable as its function `function`."""
    module = sys.modules[module_name]
    module.__edgekit_call__ = function  # type: ignore[attr-defined]
    module.__class__ = CallableModule


def progress_log(progress: Callable[[str], None] | logging.Logger | None) -> Callable[[str], None] | None:
    """`progress=`: a function that takes each stage line, or a logger (lines at INFO)."""
    if progress is None:
        return None
    if isinstance(progress, logging.Logger):
        return progress.info
    if callable(progress):
        return progress
    raise EdgekitError(f"progress= must be a function taking one line of text, or a logging.Logger (got "
                       f"{type(progress).__name__})")
