"""Benchmarks of Hobotnica against a floor and a peer; see bench/README.md."""
