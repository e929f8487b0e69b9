"""The running ``stocksync dev`` setup, found by other commands through a state file.

While ``stocksync dev`` runs it records its endpoints and key space in a file
only its user can read; a command started without broker or Redis settings
uses them (the loader applies them, the CLI says so on its first line). The
file is removed when dev stops; a file whose process is gone is ignored.

Where the file is: ``$STOCKSYNC_DEV_STATE`` when set, else
``$XDG_RUNTIME_DIR/stocksync/dev.json``, else
``{temporary directory}/stocksync-{uid}/dev.json``.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec

__all__ = ["STATE_ENV", "DevSetup", "remove_state", "running_setup", "state_path", "write_state"]

#: The variable that moves the state file (several dev runs side by side, tests).
STATE_ENV: Final = "STOCKSYNC_DEV_STATE"


class DevSetup(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=False):
    """What a running ``stocksync dev`` offers other commands."""

    pid: int
    started_at: str
    broker: str
    redis_url: str
    redis_namespace: str
    topic_prefix: str
    #: Base URL of the API, e.g. ``http://127.0.0.1:8080``.
    api_url: str
    #: Base URL of the worker's health and ``/metrics`` server.
    worker_url: str
    #: The temporary folder holding the logs of its processes.
    data_dir: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DevSetup)


def state_path(env: Mapping[str, str]) -> Path:
    """Where the state file of this user's ``stocksync dev`` is."""
    explicit = env.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "stocksync" / "dev.json"
    return Path(tempfile.gettempdir()) / f"stocksync-{os.getuid()}" / "dev.json"


def write_state(path: Path, setup: DevSetup) -> None:
    """Write ``setup`` to ``path`` (folder 0700, file 0600), atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = path.parent.stat()
    mine = folder.st_uid == os.getuid()
    private = mine and not stat.S_IMODE(folder.st_mode) & 0o022
    # A sticky folder (/tmp) keeps others from replacing the file; else it must be ours alone.
    sticky = bool(folder.st_mode & stat.S_ISVTX) and (mine or folder.st_uid == 0)
    if not (private or sticky):
        raise OSError(f"{path.parent} is not a private folder of this user")
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(_encoder.encode(setup) + b"\n")
    os.replace(temporary, path)


def remove_state(path: Path, pid: int) -> None:
    """Remove the state file at ``path`` if process ``pid`` wrote it."""
    found = _read(path)
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def running_setup(env: Mapping[str, str]) -> DevSetup | None:
    """The setup of this user's running ``stocksync dev``, or None."""
    setup = _read(state_path(env))
    return setup if setup is not None and _alive(setup.pid) else None


def _read(path: Path) -> DevSetup | None:
    try:
        info = path.stat()
        if info.st_uid != os.getuid():
            return None  # someone else's file: never take endpoints from it
        return _decoder.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours: a new process took the number
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        return b"stocksync" in cmdline.read_bytes()
    except OSError:
        return True  # no /proc here: the process exists, take it
