"""The command line every scenario server shares: ``--port --redis --skus [--broker]``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["scenario_main"]

Serve = Callable[[int, str, int, str], None]


def scenario_main(serve: Serve) -> None:
    """Parse the scenario command line and run ``serve`` until it is stopped."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="redis://host:port/db with the data")
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--broker", default="", help="kafka://host:port (Faust only)")
    args = parser.parse_args()
    serve(args.port, args.redis, args.skus, args.broker)
