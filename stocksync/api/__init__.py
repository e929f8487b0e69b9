"""The availability API: answers storefronts from an in-memory copy of the read model.

:func:`stocksync.api.app.create_app` builds the application and
:func:`stocksync.api.server.run` serves it; importing this package imports
neither, so the worker and the feed can answer errors through
:mod:`stocksync.api.errors` without loading the API.
"""

__all__: list[str] = []
