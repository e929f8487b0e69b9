"""Tests of the operator commands against a real broker and redis-server."""
