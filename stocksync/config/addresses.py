"""Addresses in the configuration: the broker's bootstrap list, and URLs safe to show.

One parser of the ``broker`` setting (:func:`parse_broker`) and one redactor
of URLs that may carry a password (:func:`redacted_url`), used by everything
that connects to the broker or prints an address: the loader, the CLI, the
worker, the feed and the operator commands.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["BROKER_FORM", "parse_broker", "redacted_url"]

#: The forms ``broker`` takes, for messages.
BROKER_FORM: Final = "kafka://host:port[;host:port...] or host:port"
_HOST_PORT: Final = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")
_PORT: Final = re.compile(r"[0-9]+")
#: What stands for a password (and for user info that may be a token).
_HIDDEN: Final = "***"


def parse_broker(url: str) -> list[str] | None:
    """The ``host:port`` addresses of a broker setting, or ``None`` when it has another form."""
    servers = url.removeprefix("kafka://").split(";")
    for server in servers:
        match = _HOST_PORT.fullmatch(server)
        if match is None or not 0 < int(match["port"]) < 65536:
            return None
    return servers


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print or log.

    The user name stays when a password follows it; user info without a password
    (which may be a token) goes entirely. The user info is what precedes the
    authority's *last* ``@``, as for every URL parser, so a password that contains
    ``@`` is hidden whole. A ``/``, ``?`` or ``#`` inside a password (left
    unescaped) ends the authority early; when an ``@`` follows the authority and
    the authority has user info or is no plain ``host:port``, everything up to
    the URL's last ``@`` goes. (A password of digits before such a character
    reads as a port to every parser, this one included.)
    """
    parts = urlsplit(url)
    user_info, at, host = parts.netloc.rpartition("@")
    scheme, sep, rest = url.partition("://")
    after = rest[len(parts.netloc) :] if sep else ""
    if "@" in after and (at or not _plain_authority(parts.netloc)):
        # The password may go on past the authority: hide all up to the last '@'.
        return f"{scheme}{sep}{_HIDDEN}@{rest.rpartition('@')[2]}"
    if not at:
        return url
    name, colon, _ = user_info.partition(":")
    shown = f"{name}:{_HIDDEN}" if colon else _HIDDEN
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def _plain_authority(netloc: str) -> bool:
    """Whether ``netloc`` is a bare ``host[:port]``, not the start of mangled user info."""
    if netloc.startswith("["):  # an IPv6 literal: [::1]:6379
        _, bracket, port = netloc[1:].partition("]")
        return bool(bracket) and (not port or bool(_PORT.fullmatch(port.removeprefix(":"))))
    return ":" not in netloc or bool(_PORT.fullmatch(netloc.rpartition(":")[2]))
