"""What the API processes of one host share: rate buckets and the supervisor's restart count.

``stocksync api --processes N`` serves one port from N forked processes; a
token's rate and the failed-authentication limit must hold for the host, not
per process. :class:`HostState` is a small shared memory mapping, made before
the fork and inherited by every server process (one the supervisor restarts
too). Each bucket is two float64, its level and the time of its last update
on ``CLOCK_MONOTONIC``, which every process of the host reads alike.

Updates hold a POSIX record lock (``fcntl.lockf``) on the file behind the
mapping: the kernel releases it when its holder dies, so a server killed with
SIGKILL in the middle of an update never blocks the others. A single process
takes no lock, and its mapping is private. Reads that only decide whether to
refuse (:meth:`HostState.level`) take none either: a figure stale by a few
microseconds decides nothing.

Layout, in float64 cells: cell 0 the supervisor's restart count, cells 2-3 the
first token's bucket, and so on; then :data:`ADDRESS_SLOTS` buckets of failed
authentications, one per hash of a client address.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import tempfile
import time
from collections.abc import Callable
from typing import IO, Final

__all__ = ["ADDRESS_SLOTS", "HostState"]

#: Buckets of failed authentications; addresses are hashed into them (collisions share).
ADDRESS_SLOTS: Final = 4096
_RESTARTS: Final = 0
_FIRST_BUCKET: Final = 2


class HostState:
    """Token buckets and a restart counter in memory shared by the API processes of a host."""

    def __init__(
        self,
        tokens: int,
        *,
        shared: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tokens = tokens
        self.shared = shared
        self.clock = clock
        size = 8 * (_FIRST_BUCKET + 2 * (tokens + ADDRESS_SLOTS))
        self._file: IO[bytes] | None = None
        if shared:
            # An unlinked file: a record lock needs one, and it vanishes with its last user.
            self._file = tempfile.TemporaryFile()  # noqa: SIM115  # closed by close()
            os.ftruncate(self._file.fileno(), size)
            self._map = mmap.mmap(self._file.fileno(), size, flags=mmap.MAP_SHARED)
        else:
            self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._cells = memoryview(self._map).cast("d")

    def close(self) -> None:
        """Unmap and close (the other processes keep their own mapping)."""
        self._cells.release()
        self._map.close()
        if self._file is not None:
            self._file.close()

    # --- buckets ---

    def take(self, bucket: int, rate: float, capacity: float) -> float:
        """Take one from ``bucket``: 0.0 if there was one, else the seconds until there is."""
        cells = self._cells
        at = _FIRST_BUCKET + 2 * bucket
        lock = self._file
        if lock is not None:
            fcntl.lockf(lock, fcntl.LOCK_EX)
        try:
            now = self.clock()
            stamp = cells[at + 1]
            level = capacity if stamp == 0.0 else min(capacity, cells[at] + (now - stamp) * rate)
            cells[at + 1] = now
            if level >= 1.0:
                cells[at] = level - 1.0
                return 0.0
            cells[at] = level
            return (1.0 - level) / rate
        finally:
            if lock is not None:
                fcntl.lockf(lock, fcntl.LOCK_UN)

    def level(self, bucket: int, rate: float, capacity: float) -> float:
        """What ``bucket`` holds now (read without a lock: for a decision, not an update)."""
        cells = self._cells
        at = _FIRST_BUCKET + 2 * bucket
        stamp = cells[at + 1]
        if stamp == 0.0:
            return capacity
        return min(capacity, cells[at] + (self.clock() - stamp) * rate)

    def token_bucket(self, index: int) -> int:
        """The bucket of the ``index``-th configured token."""
        if not 0 <= index < self.tokens:
            raise IndexError(f"token {index} of {self.tokens}")
        return index

    def address_bucket(self, slot: int) -> int:
        """The bucket of failed authentications for address hash ``slot``."""
        return self.tokens + slot % ADDRESS_SLOTS

    # --- the supervisor's count ---

    @property
    def restarts(self) -> int:
        """Server processes the supervisor has restarted after they died."""
        return int(self._cells[_RESTARTS])

    def count_restart(self) -> None:
        """Count one restart (only the supervisor writes it)."""
        self._cells[_RESTARTS] += 1
