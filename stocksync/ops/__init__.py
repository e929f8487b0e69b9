"""Operator tools: dead letters, rebuild, reconcile, produce, the probe and the peak rehearsal."""

__all__: list[str] = []
