"""Every Redis key stocksync uses, in one place.

Per-entity keys carry the entity id as a hash tag (``{sku}``, ``{order_id}``,
``{rma_id}``) so they spread over a Redis Cluster and each one lives in one
slot. ``namespace`` (default ``stocksync``) separates deployments and lets a
rebuild write a fresh key space beside the live one.
"""

from __future__ import annotations

__all__ = ["POSITION_FIELD", "PROJECTION_FIELD", "VERSION_FIELD", "Keys"]

#: Hash fields of a SKU key.
VERSION_FIELD = "v"
POSITION_FIELD = "pos"
PROJECTION_FIELD = "proj"


class Keys:
    """Key builders for one namespace."""

    __slots__ = ("ns",)

    def __init__(self, namespace: str = "stocksync") -> None:
        self.ns = namespace

    def sku(self, sku: str) -> str:
        """Hash of one SKU: ``v`` version, ``pos`` msgpack Position, ``proj`` JSON SkuProjection."""
        return f"{self.ns}:sku:{{{sku}}}"

    def sku_pattern(self) -> str:
        """SCAN match pattern of every SKU hash."""
        return f"{self.ns}:sku:*"

    def sku_of(self, key: str | bytes) -> str:
        """The SKU inside a key built by :meth:`sku`."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[text.index("{") + 1 : text.rindex("}")]

    def order(self, order_id: str) -> str:
        """Hash of one order: ``s`` msgpack OrderState, ``src`` + ``m`` how far it has read."""
        return f"{self.ns}:order:{{{order_id}}}"

    def rma(self, rma_id: str) -> str:
        """Hash of one RMA: ``s`` msgpack RmaState, ``src`` + ``m`` how far it has read."""
        return f"{self.ns}:rma:{{{rma_id}}}"

    def changes(self) -> str:
        """Capped stream with one entry per changed SKU (fields ``sku``, ``v``, ``proj``)."""
        return f"{self.ns}:changes"

    def meta(self) -> str:
        """Hash of deployment facts (layout version, topology fingerprint)."""
        return f"{self.ns}:meta"

    def generation(self) -> str:
        """String naming the live generation of the base namespace; absent: the base itself."""
        return f"{self.ns}:generation"
