"""The one broker parser and the one URL redactor."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stocksync.config import bootstrap_servers, redacted_url
from stocksync.config.addresses import parse_broker
from stocksync.config.loader import ConfigError


@pytest.mark.parametrize(
    ("broker", "servers"),
    [
        ("kafka://127.0.0.1:9092", ["127.0.0.1:9092"]),
        ("127.0.0.1:9092", ["127.0.0.1:9092"]),
        ("kafka://a:1;b.example:9092;[::1]:29092", ["a:1", "b.example:9092", "[::1]:29092"]),
    ],
)
def test_broker_settings_give_their_bootstrap_addresses(broker: str, servers: list[str]) -> None:
    assert parse_broker(broker) == servers
    assert bootstrap_servers(broker) == servers


@pytest.mark.parametrize(
    "broker",
    ["", "kafka://", "kafka://a", "kafka://a:0", "kafka://a:65536", "kafka://a:1,b:2", "a:1;"],
)
def test_other_broker_forms_are_refused_by_name(broker: str) -> None:
    assert parse_broker(broker) is None
    with pytest.raises(ConfigError, match=r"broker = .* is invalid: expected kafka://host:port"):
        bootstrap_servers(broker)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://alice:hunter2@db:6379/0", "redis://alice:***@db:6379/0"),
        ("rediss://:hunter2@db:6380", "rediss://:***@db:6380"),
        ("redis://alice:p@ss@w@rd@db:6379/0", "redis://alice:***@db:6379/0"),
        ("redis://alice:p%40ss@db:6379/0", "redis://alice:***@db:6379/0"),
        ("redis://alice:pa:ss@[::1]:6379", "redis://alice:***@[::1]:6379"),
        ("https://TOKEN@hooks.example/x", "https://***@hooks.example/x"),
        ("unix://:hunter2@/run/redis.sock", "unix://:***@/run/redis.sock"),
        # A '/', '?' or '#' in the password ends the authority early: all of it goes.
        ("redis://alice:pa/ss@db:6379/0", "redis://***@db:6379/0"),
        ("redis://alice:pa#ss@db:6379/0", "redis://***@db:6379/0"),
        ("redis://alice:p@ss?x@db:6379/0", "redis://***@db:6379/0"),
        ("redis://alice:#1@db:6379/0", "redis://***@db:6379/0"),
        # No user info: an '@' in the path or query stays.
        ("https://hooks.example:8443/to?who=ops@shop", "https://hooks.example:8443/to?who=ops@shop"),
        ("https://[::1]:8443/@me", "https://[::1]:8443/@me"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


_SECRET_CHARACTERS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ@:%!$&'()*+,;=~", min_size=1)


@settings(max_examples=300)
@given(password=_SECRET_CHARACTERS)
def test_no_part_of_a_password_is_ever_shown(password: str) -> None:
    # Capitals appear nowhere else in the URL, so any of them in the output is a leak.
    for url in (f"redis://alice:{password}@db.local:6379/0", f"rediss://:{password}@db.local"):
        shown = redacted_url(url)
        assert not any(c.isupper() for c in shown), (url, shown)
        assert shown.endswith("***@db.local:6379/0") or shown.endswith("***@db.local")


@settings(max_examples=300)
@given(password=st.text(alphabet="ABCXYZ@:/?#%", min_size=1))
def test_no_part_of_a_mangled_password_is_ever_shown(password: str) -> None:
    shown = redacted_url(f"redis://alice:{password}@db.local:6379/0")
    assert not any(c.isupper() for c in shown), shown
