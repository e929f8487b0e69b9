"""Run a check as a user that file permissions apply to, even when the tests run as root.

Root reads any file, so "a file this user cannot read" cannot be made for root.
As root, :func:`as_unprivileged` forks, drops the child to ``nobody`` and calls the
function there (everything it needs is already imported); its result or exception
comes back through a pipe. As anyone else it just calls the function.
:func:`open_folder` makes a folder that user can reach, so that only the mode of
the file under test stands in its way.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ["NOBODY", "as_unprivileged", "open_folder"]

T = TypeVar("T")

#: The uid and gid the child takes (``nobody`` on Debian).
NOBODY = 65534


def as_unprivileged(call: Callable[[], T]) -> T:
    """``call()``, as ``nobody`` in a forked child when this process is root."""
    if os.geteuid() != 0:
        return call()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome: tuple[str, object] = ("returned", call())
            except Exception as exc:
                outcome = ("raised", exc)
            data = pickle.dumps(outcome)
        except BaseException as exc:
            data = pickle.dumps(("broken", repr(exc)))
        with os.fdopen(write, "wb") as pipe:
            pipe.write(data)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "raised":
        assert isinstance(value, Exception)
        raise value
    if kind == "broken":
        raise RuntimeError(f"the unprivileged child failed: {value}")
    return value  # type: ignore[return-value]


@contextlib.contextmanager
def open_folder() -> Iterator[Path]:
    """A new folder (mode 0755) in the system's temporary directory, removed after."""
    folder = Path(tempfile.mkdtemp(prefix="stocksync-test-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
