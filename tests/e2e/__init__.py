"""End-to-end tests: real ``stocksync worker`` processes, the real broker, a real redis-server."""
