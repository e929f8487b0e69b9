"""``[[channels]]`` notify settings and ``[feed]`` webhooks: valid forms and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stocksync.config import ConfigError, load_settings

__all__: list[str] = []

SECRET = "s3cret-value-never-shown"


def load(tmp_path: Path, text: str) -> object:
    secret = tmp_path / "hook-secret"
    secret.write_text(SECRET + "\n")
    path = tmp_path / "stocksync.toml"
    path.write_text(text.replace("SECRET_FILE", str(secret)), encoding="utf-8")
    return load_settings(str(path), {})


def hook(**fields: str) -> str:
    values = {"name": '"market"', "url": '"https://hooks.example.com/stock"',
              "secret_file": '"SECRET_FILE"', **fields}
    body = "\n".join(f"{k} = {v}" for k, v in values.items() if v)
    return f"[[feed.webhooks]]\n{body}\n"


def test_defaults_and_a_full_webhook(tmp_path: Path) -> None:
    settings = load(tmp_path, """
[[channels]]
name = "web"
nodes = ["dc-east"]
notify = "quantity"
notify_min_interval_ms = 250

[[channels]]
name = "store"
nodes = ["dc-east"]
""" + hook(channels='["web"]', statuses='["out_of_stock", "in_stock"]', max_attempts="5"))
    web, store = settings.channels  # type: ignore[attr-defined]
    assert (web.notify, web.notify_min_interval_ms) == ("quantity", 250)
    assert (store.notify, store.notify_min_interval_ms) == ("status", 1000)
    (webhook,) = settings.feed.webhooks  # type: ignore[attr-defined]
    assert webhook.channels == ["web"] and webhook.max_attempts == 5
    assert webhook.secret.reveal() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (hook(url='"ftp://hooks.example.com/x"'),
         "feed.webhooks[0].url = 'ftp://hooks.example.com/x' is invalid: expected an http://"),
        (hook(url='"https://user:pw@hooks.example.com/x"'),
         "feed.webhooks[0].url = 'https://user:***@hooks.example.com/x' is invalid: it has"
         " credentials in it"),
        (hook(url='"https://user@hooks.example.com/x"'), "it has credentials in it"),
        (hook(channels='["nope"]'), "feed.webhooks[0].channels[0] = 'nope' is invalid: no such"
         " channel"),
        (hook(secret_file='"/no/such/file"'),
         "feed.webhooks[0].secret_file = '/no/such/file' is invalid: the file does not exist"),
        (hook(secret='"inline"'), "feed.webhooks[0].secret is not a setting"),
        (hook() + hook(), "feed.webhooks[1].name = 'market' is invalid: feed.webhooks[0].name"
         " has it already"),
        (hook(max_attempts="0"), "feed.webhooks[0].max_attempts = 0 is invalid"),
        (hook(statuses='["sold_out"]'), "feed.webhooks[0].statuses[0] = 'sold_out' is invalid"),
        ('[[channels]]\nname = "web"\nnodes = ["a"]\nnotify = "always"\n',
         "channels[0].notify = 'always' is invalid: expected one of 'off', 'quantity', 'status'"),
        ("[feed]\nretry_base_ms = 100\nretry_max_ms = 50\n",
         "feed.retry_max_ms = 50 is invalid"),
    ],
)
def test_errors_are_one_line_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    shown = str(caught.value)
    assert message in shown
    assert "\n" not in shown and SECRET not in shown and "pw@" not in shown
