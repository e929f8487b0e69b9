"""The availability core does no I/O: it imports no event loop, broker, store or web library."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import stocksync.readmodel.core
import stocksync.readmodel.holds

CORE = Path(stocksync.readmodel.core.__file__)
HOLDS = Path(stocksync.readmodel.holds.__file__)
#: Libraries that mean I/O; the core must not reach them, directly or through what it imports.
FORBIDDEN = ("asyncio", "redis", "faust", "aiohttp", "aiokafka", "mode")


def imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``source`` names, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant)):
            found.add(str(node.args[0].value))
    return found


def test_imported_modules_sees_every_form_of_import() -> None:
    source = textwrap.dedent("""
        import asyncio.events as ev
        from redis import asyncio
        def later():
            import faust
            __import__("aiohttp")
        from . import sibling
    """)
    assert imported_modules(source) == {"asyncio.events", "redis", "faust", "aiohttp"}


@pytest.mark.parametrize("module", [CORE, HOLDS], ids=["core", "holds"])
def test_core_source_imports_no_io_library(module: Path) -> None:
    roots = {name.split(".")[0] for name in imported_modules(module.read_text(encoding="utf-8"))}
    assert roots.isdisjoint(FORBIDDEN), sorted(roots & set(FORBIDDEN))


@pytest.mark.timeout(60)
def test_core_imports_and_runs_with_io_libraries_blocked() -> None:
    # A None entry in sys.modules makes any import of that name raise ImportError, so this
    # fails if the core or anything it imports (codecs, settings) reaches for one of them.
    script = textwrap.dedent(f"""
        import sys
        for name in {FORBIDDEN!r}:
            sys.modules[name] = None
        from stocksync.readmodel import core, holds
        from stocksync.codecs.messages import decode_message
        from stocksync.codecs.state import Position
        topology = core.Topology(channels=(core.ChannelSpec(name="web", nodes=("n",)),))
        [(_, event, _)] = decode_message(
            b'{{"type":"stock.snapshot","schema":1,"event_id":"e","source":"erp",'
            b'"occurred_at":"2026-11-27T09:00:00Z","sku":"A","node":"n","on_hand":3,'
            b'"as_of":"2026-11-27T09:00:00Z"}}'
        ).events
        ref = core.SourceRef(kind="stock", partition=0, offset=0)
        outcome, _ = core.translate(event, None, ref, 0, 86_400_000)
        position = Position(sku="A")
        core.apply_effects(position, outcome.effects, 0, 86_400_000)
        assert core.project(position, topology).channels[0].available == 3
        assert holds.available_after_holds(3, 1) == 2
        loaded = sorted(
            name for name, module in sys.modules.items()
            if module is not None and name.split(".")[0] in {FORBIDDEN!r}
        )
        assert not loaded, loaded
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr


def test_the_readmodel_package_holds_only_the_pure_core() -> None:
    names = sorted(p.name for p in CORE.parent.glob("*.py"))
    # holds.py: the hold arithmetic, held to the same purity checks as the core above.
    assert names == ["__init__.py", "core.py", "holds.py"]
