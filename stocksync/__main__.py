"""``python -m stocksync``: the same command line as the ``stocksync`` script."""

from stocksync.cli.main import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
