"""The root of every error stocksync raises on purpose.

Catch :class:`StocksyncError` to handle any of them. Each class lives with the
code that raises it; its message is a sentence that shows the bad value and
says what to do. Library errors are converted where they are met
(``raise StoreUnavailable(...) from exc``). The tree::

    StocksyncError
    ├── ConfigError            stocksync.config.loader: the configuration is invalid
    ├── StoreError             stocksync.store.protocol: the read model's store failed
    │   ├── StoreUnavailable   the store cannot be reached or failed a command
    │   ├── ModelLost          the store lost the model (restarted empty, flushed)
    │   ├── SwitchRefused      stocksync.store.redis: another rebuild switched first
    │   └── NoScript           stocksync.store.multiplex: Redis lacks the script; load it
    ├── LeaseLost              stocksync.store.feed: another feed process holds the lease
    ├── TopicSetupError        stocksync.agents.topics: topics cannot be listed or created
    │   └── BrokerUnavailable  no Kafka broker answered
    ├── MessageTooLarge        stocksync.agents.stages: messages refused for their size
    ├── WorkerStartError       stocksync.agents.app: a worker did not get its partitions
    ├── WorkerError            stocksync.daemon.worker: the worker could not start
    ├── ServiceError           stocksync.daemon.services: a local broker or Redis failed
    ├── OperateError           stocksync.ops.access: an operator command cannot go on
    │   └── Refused            the command would be unsafe now, or its input is invalid
    ├── FeedError              stocksync.feed.service: the feed could not start
    ├── ClientGone             stocksync.api.upload: the client hung up mid-request
    ├── BodyTimeout            stocksync.api.upload: the body did not arrive in time
    └── ApiError               stocksync.api.errors: an HTTP error answer (its own tree there)

``BodyTimeout`` is also a :class:`TimeoutError`, which is what aiohttp's body
readers expect. Private exceptions used for control flow inside one module
(they never leave it) are not part of the tree.

Every error that reaches an HTTP client, from any of stocksync's servers, is
answered by :func:`stocksync.api.errors.error_response` in the contract's
shape, ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

__all__ = ["StocksyncError"]


class StocksyncError(Exception):
    """An error stocksync raises on purpose; the message says what is wrong and what to do."""
