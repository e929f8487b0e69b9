"""The ``stocksync`` command line: argument parsing and one module per command group."""

__all__: list[str] = []
