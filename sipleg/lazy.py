"""
Names a package exports without importing their modules until first use,
so that nothing a configuration does not use is imported (C{docs/design.md},
"The request pass" and the module map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, table: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """
    A module C{__getattr__} (PEP 562) for C{package}: a name of C{table}
    is imported from its module when first asked for, then kept in
    C{namespace}.

    @param table: exported name to the module defining it.
    @param namespace: the package's C{globals()}.
    """

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
