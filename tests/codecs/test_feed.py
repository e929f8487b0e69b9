"""The feed's wire forms: the contract's example, byte for byte, and the event id rule."""

from __future__ import annotations

from stocksync.codecs.feed import AvailabilityChanged, changed_decoder, encode, event_id

__all__: list[str] = []

CONTRACT_EXAMPLE = (
    b'{"type":"availability.changed","schema":1,"event_id":"av-TSHIRT-RED-M-web-43",'
    b'"occurred_at":"2026-11-27T09:01:10.512Z","sku":"TSHIRT-RED-M","channel":"web",'
    b'"available":4,"status":"low_stock","previous_status":"in_stock","version":43,'
    b'"correlation_id":"ord-9912"}'
)


def test_the_contract_example_round_trips_byte_for_byte() -> None:
    message = AvailabilityChanged(
        event_id=event_id("TSHIRT-RED-M", "web", 43),
        occurred_at="2026-11-27T09:01:10.512Z",
        sku="TSHIRT-RED-M", channel="web", available=4, status="low_stock",
        previous_status="in_stock", version=43, correlation_id="ord-9912",
    )
    assert encode(message) == CONTRACT_EXAMPLE
    assert changed_decoder.decode(CONTRACT_EXAMPLE) == message


def test_a_first_message_has_no_previous_status_and_an_unknown_cause_no_correlation_id() -> None:
    message = AvailabilityChanged(
        event_id=event_id("S", "web", 1), occurred_at="2026-11-27T09:01:10.512Z",
        sku="S", channel="web", available=0, status="out_of_stock", version=1,
    )
    assert encode(message) == (
        b'{"type":"availability.changed","schema":1,"event_id":"av-S-web-1",'
        b'"occurred_at":"2026-11-27T09:01:10.512Z","sku":"S","channel":"web","available":0,'
        b'"status":"out_of_stock","version":1}'
    )
