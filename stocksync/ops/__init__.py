"""Operator tools that look at a deployment from outside: the probe and the peak rehearsal."""

__all__: list[str] = []
