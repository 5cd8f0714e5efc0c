"""Benchmark of socksauth against a direct (no-proxy) baseline; see bench/README.md."""
