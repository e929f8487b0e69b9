"""Events of the contract as the agents' tests send them."""

from __future__ import annotations

__all__ = ["ev"]


def ev(type_: str, event_id: str, **fields: object) -> dict[str, object]:
    """An event of the contract with a default envelope; ``fields`` add to or replace it."""
    return {
        "type": type_,
        "schema": 1,
        "event_id": event_id,
        "occurred_at": "2026-11-27T09:00:00Z",
        "source": "test",
        **fields,
    }
