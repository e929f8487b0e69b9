"""One exception root: every error the package defines derives from it, as its docstring draws."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import stocksync
from stocksync.api import errors as api_errors
from stocksync.errors import StocksyncError


def _modules() -> list[ModuleType]:
    found = [stocksync]
    for info in pkgutil.walk_packages(stocksync.__path__, "stocksync."):
        if info.name != "stocksync.__main__":
            found.append(importlib.import_module(info.name))
    return found


def _exceptions() -> dict[str, type[BaseException]]:
    """Every public exception class defined in the package, by name."""
    found: dict[str, type[BaseException]] = {}
    for module in _modules():
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
                and not name.startswith("_")
            ):
                found[name] = value
    return found


def _drawn(doc: str, root: str) -> dict[str, str]:
    """The tree drawn in ``doc`` under ``root``: each class name -> its parent's name."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == root)
    stack.append((lines[start].index(root), root))
    for line in lines[start + 1 :]:
        drawn = re.match(r"^(\s*(?:[│ ]   )*)[├└]── (\w+)", line)
        if drawn is None:
            if line.strip():
                break
            continue
        depth = len(drawn[1]) + 4  # the column of the name
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[drawn[2]] = stack[-1][1]
        stack.append((depth, drawn[2]))
    return parents


def _actual(root: type[BaseException], stop: set[type[BaseException]]) -> dict[str, str]:
    """The real subclasses of ``root``: each class name -> its parent's name."""
    parents: dict[str, str] = {}
    for child in root.__subclasses__():
        if child.__name__.startswith("_") or not child.__module__.startswith("stocksync"):
            continue
        parents[child.__name__] = root.__name__
        if child not in stop:
            parents |= _actual(child, stop)
    return parents


def test_every_public_exception_derives_from_the_root() -> None:
    strays = [
        f"{cls.__module__}.{name}"
        for name, cls in _exceptions().items()
        if not issubclass(cls, StocksyncError)
    ]
    assert not strays, f"exceptions outside the StocksyncError tree: {strays}"


def test_the_root_docstring_draws_the_real_tree() -> None:
    _exceptions()  # imports every module, so every subclass exists
    import stocksync.errors

    assert stocksync.errors.__doc__ is not None
    drawn = _drawn(stocksync.errors.__doc__, "StocksyncError")
    assert drawn == _actual(StocksyncError, stop={api_errors.ApiError})


def test_the_api_errors_docstring_draws_the_real_tree() -> None:
    assert api_errors.__doc__ is not None
    drawn = _drawn(api_errors.__doc__, "ApiError")
    assert drawn == _actual(api_errors.ApiError, stop=set())
