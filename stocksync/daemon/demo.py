"""A realistic, seeded stream of contract events: for ``stocksync dev`` and the benchmarks.

It plays an ERP (full stock exports as bulk snapshots, adjustments, safety
stock policies), a shop and an OMS (orders created with or without a node,
allocated, shipped or cancelled) and a returns platform (authorized,
received, inspected). Every lifecycle it produces is valid, so the events it
makes change the model, and it is deterministic for a given seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

__all__ = ["DemoStream", "Message", "demo_skus"]

_PRODUCTS = ("TSHIRT", "HOODIE", "SOCKS", "CAP", "JEANS", "JACKET", "SCARF", "SHORTS")
_COLORS = ("RED", "BLUE", "BLACK", "WHITE", "GREEN")
_SIZES = ("XS", "S", "M", "L", "XL")
_REASONS = ("receipt", "cycle_count", "damage", "shrink", "correction")
_encode = msgspec.json.encode


def demo_skus(count: int) -> list[str]:
    """``count`` SKU names: product-colour-size while they last, then numbered ones."""
    named = [f"{p}-{c}-{s}" for p in _PRODUCTS for c in _COLORS for s in _SIZES]
    if count <= len(named):
        return named[:count]
    return named + [f"SKU-{i:07d}" for i in range(count - len(named))]


class Message(msgspec.Struct, frozen=True):
    """One message to produce: topic kind (``stock``/``orders``/``returns``), key and value."""

    kind: str
    key: bytes
    value: bytes
    count: int = 1


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class DemoStream:
    """Generates valid inventory traffic for a set of SKUs, nodes and channels."""

    def __init__(
        self,
        *,
        skus: Sequence[str],
        nodes: Sequence[str],
        channels: Sequence[str],
        seed: int = 7,
        start: datetime | None = None,
        stock_share: float = 0.8,
    ) -> None:
        self.rng = random.Random(seed)
        self.skus = list(skus)
        self.nodes = list(nodes)
        self.channels = list(channels)
        self.stock_share = stock_share
        self.clock = start or datetime.now(UTC).replace(microsecond=0)
        self._serial = 0
        self._open_orders: dict[str, dict[str, Any]] = {}
        self._rmas: dict[str, dict[str, Any]] = {}
        self._shipped: list[tuple[str, str, int]] = []

    def _event(self, type_: str, source: str, **fields: Any) -> dict[str, Any]:
        self._serial += 1
        self.clock += timedelta(milliseconds=10)
        return {
            "type": type_,
            "schema": 1,
            "event_id": f"{source}-{self._serial}",
            "occurred_at": _ts(self.clock),
            "source": source,
            **fields,
        }

    def snapshots(
        self, *, per_message: int = 100, on_hand: tuple[int, int] = (0, 200)
    ) -> Iterator[Message]:
        """A full ERP stock export: one snapshot per SKU and node, in bulk messages."""
        as_of = _ts(self.clock)
        batch: list[dict[str, Any]] = []
        for sku in self.skus:
            for node in self.nodes:
                batch.append(
                    self._event(
                        "stock.snapshot",
                        "erp",
                        sku=sku,
                        node=node,
                        on_hand=self.rng.randint(*on_hand),
                        as_of=as_of,
                    )
                )
                if len(batch) == per_message:
                    yield Message("stock", b"erp-export", _encode(batch), len(batch))
                    batch = []
        if batch:
            yield Message("stock", b"erp-export", _encode(batch), len(batch))

    def policies(self) -> Iterator[Message]:
        """Safety stock for a few SKUs."""
        for sku in self.rng.sample(self.skus, max(1, len(self.skus) // 10)):
            event = self._event(
                "stock.policy",
                "erp",
                sku=sku,
                node=self.rng.choice(self.nodes),
                safety_stock=self.rng.randint(1, 5),
            )
            yield Message("stock", sku.encode(), _encode(event))

    def events(self, count: int) -> Iterator[Message]:
        """``count`` single-event messages: ``stock_share`` stock, the rest orders and returns."""
        for _ in range(count):
            yield self._stock() if self.rng.random() < self.stock_share else self._commerce()

    def _stock(self) -> Message:
        sku = self.rng.choice(self.skus)
        node = self.rng.choice(self.nodes)
        if self.rng.random() < 0.15:
            event = self._event(
                "stock.snapshot",
                "wms",
                sku=sku,
                node=node,
                on_hand=self.rng.randint(0, 200),
                as_of=_ts(self.clock),
            )
        else:
            delta = self.rng.choice((-3, -2, -1, 1, 2, 5, 10, 24))
            event = self._event(
                "stock.adjusted",
                "wms",
                sku=sku,
                node=node,
                delta=delta,
                reason="receipt" if delta > 0 else self.rng.choice(_REASONS),
            )
        return Message("stock", sku.encode(), _encode(event))

    def _commerce(self) -> Message:
        roll = self.rng.random()
        if roll < 0.1 and self._shipped:
            return self._return_step()
        if roll < 0.45 or not self._open_orders:
            return self._create_order()
        return self._advance_order()

    def _create_order(self) -> Message:
        order_id = f"ord-{self._serial}"
        lines = []
        for n in range(self.rng.randint(1, 3)):
            line: dict[str, Any] = {
                "line_id": str(n + 1),
                "sku": self.rng.choice(self.skus),
                "qty": self.rng.randint(1, 3),
            }
            if self.rng.random() < 0.3:
                line["node"] = self.rng.choice(self.nodes)
            lines.append(line)
        channel = self.rng.choice(self.channels)
        event = self._event(
            "order.created",
            "shop",
            order_id=order_id,
            channel=channel,
            lines=lines,
            correlation_id=order_id,
        )
        self._open_orders[order_id] = {"lines": lines, "allocated": False}
        return Message("orders", order_id.encode(), _encode(event))

    def _advance_order(self) -> Message:
        order_id = self.rng.choice(list(self._open_orders))
        order = self._open_orders[order_id]
        roll = self.rng.random()
        if not order["allocated"] and roll < 0.6:
            order["allocated"] = True
            node = self.rng.choice(self.nodes)
            order["node"] = node
            event = self._event(
                "order.allocated",
                "oms",
                order_id=order_id,
                correlation_id=order_id,
                lines=[{"line_id": ln["line_id"], "node": node} for ln in order["lines"]],
            )
        elif roll < 0.85:
            del self._open_orders[order_id]
            node = order.get("node") or self.rng.choice(self.nodes)
            event = self._event(
                "order.shipped",
                "wms",
                order_id=order_id,
                correlation_id=order_id,
                shipment_id=f"shp-{self._serial}",
                node=node,
                lines=[{"line_id": ln["line_id"], "qty": ln["qty"]} for ln in order["lines"]],
            )
            for ln in order["lines"]:
                self._shipped.append((order_id, ln["sku"], ln["qty"]))
        else:
            del self._open_orders[order_id]
            event = self._event(
                "order.cancelled", "shop", order_id=order_id, correlation_id=order_id
            )
        return Message("orders", order_id.encode(), _encode(event))

    def _return_step(self) -> Message:
        pending = [r for r, state in self._rmas.items() if state["step"] < 3]
        if pending and self.rng.random() < 0.7:
            rma_id = self.rng.choice(pending)
            rma = self._rmas[rma_id]
            rma["step"] += 1
            node = rma["node"]
            if rma["step"] == 2:
                event = self._event(
                    "return.received",
                    "returns",
                    rma_id=rma_id,
                    node=node,
                    lines=[{"line_id": "1", "qty": rma["qty"]}],
                )
            else:
                event = self._event(
                    "return.inspected",
                    "returns",
                    rma_id=rma_id,
                    node=node,
                    lines=[
                        {
                            "line_id": "1",
                            "qty": rma["qty"],
                            "disposition": self.rng.choice(
                                ("restock", "restock", "damaged", "refurbish")
                            ),
                        }
                    ],
                )
            return Message("returns", rma_id.encode(), _encode(event))
        order_id, sku, qty = self._shipped.pop(self.rng.randrange(len(self._shipped)))
        rma_id = f"rma-{self._serial}"
        self._rmas[rma_id] = {"step": 1, "node": self.rng.choice(self.nodes), "qty": qty}
        event = self._event(
            "return.authorized",
            "returns",
            rma_id=rma_id,
            order_id=order_id,
            lines=[{"line_id": "1", "sku": sku, "qty": qty}],
        )
        return Message("returns", rma_id.encode(), _encode(event))
