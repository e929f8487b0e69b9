"""Who owns a dead letter: ``[dlq.owners]`` patterns in file order, then the topic's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from stocksync.agents.owners import Owners, source_of
from stocksync.config.loader import ConfigError, load_settings
from stocksync.config.settings import DlqSettings, TopicOwnerSettings


def test_the_topic_decides_without_patterns() -> None:
    owners = Owners()
    assert owners.of("stock", "erp") == "erp"
    assert owners.of("stock", None) == "erp"
    assert owners.of("orders", "shop") == "commerce"
    assert owners.of("returns", "returns") == "returns"


@pytest.mark.parametrize(
    ("kind", "source", "team"),
    [
        ("stock", "wms-east", "warehouse"),
        ("stock", "wms-", "warehouse"),
        ("stock", "WMS-east", "erp"),  # globs are case-sensitive
        ("stock", "erp-de", "finance"),  # the first matching pattern wins...
        ("stock", "erp-fr", "erp"),  # ...in file order
        ("orders", "shop-7", "commerce"),
        ("orders", "shop-77", "returns"),  # ? is one character, * any run
        ("orders", "oms", "commerce"),  # no pattern: the topic's default
        ("returns", "rt", "warehouse"),  # a configured topic default
        ("stock", None, "erp"),
    ],
)
def test_patterns_then_defaults(kind: str, source: str | None, team: str) -> None:
    owners = Owners(
        DlqSettings(
            owners={"wms-*": "warehouse", "erp-[d]?": "finance", "erp-*": "erp",
                    "shop-?": "commerce", "shop-*": "returns"},
            default_owners=TopicOwnerSettings(returns="warehouse"),
        )
    )
    assert owners.of(kind, source) == team
    assert owners.of(kind, source) == team  # memoised the same


@pytest.mark.parametrize(
    ("raw", "source"),
    [
        (b'{"type":"stock.snapshot","source":"wms-1","sku":"A"}', "wms-1"),
        (b'{"source": 7}', None),
        (b"{oops", None),
        (b"[1, 2]", None),
        (b"\xff\xfe", None),
        (b'{"sku":"A"}', None),
        (b"[" * 100_000, None),
    ],
)
def test_the_source_of_raw_bytes(raw: bytes, source: str | None) -> None:
    assert source_of(raw) == source


def test_a_source_is_read_from_the_bytes_only_when_patterns_need_it() -> None:
    owners = Owners(DlqSettings(owners={"wms-*": "warehouse"}))
    assert owners.of_raw("stock", b'{"source":"wms-1"}') == "warehouse"
    assert owners.of_raw("stock", b'{"source":"wms-1"}', "erp") == "erp"
    assert owners.of_raw("stock", b"{oops") == "erp"


def test_owners_from_toml_in_file_order(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[dlq.owners]\n"wms-*" = "warehouse"\n"*" = "finance"\n'
        '[dlq.default_owners]\norders = "returns"\n'
    )
    settings = load_settings(str(config), {})
    assert list(settings.dlq.owners) == ["wms-*", "*"]
    owners = Owners(settings.dlq)
    assert owners.of("stock", "wms-2") == "warehouse"
    assert owners.of("stock", "erp") == "finance"
    assert owners.of("orders", None) == "returns"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[dlq.owners]\n"wms-*" = "warehose"\n',
         "dlq.owners.\"wms-*\" = 'warehose' is invalid: expected one of 'commerce', 'erp',"
         " 'finance', 'returns', 'warehouse'"),
        ('[dlq.owners]\n"" = "erp"\n',
         "dlq.owners has a bad key '': expected a glob over the event's source"),
        ('[dlq.default_owners]\nstock = "shop"\n',
         "dlq.default_owners.stock = 'shop' is invalid: expected one of"),
        ('[dlq.default_owners]\nfeed = "erp"\n', "dlq.default_owners.feed"),
        ('[dlq]\nowners = ["erp"]\n', "dlq.owners = ['erp'] is invalid: expected a table"),
    ],
)
def test_a_bad_owner_setting_is_one_line_naming_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(str(config), {})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
