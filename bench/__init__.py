"""Benchmarks that run against the platform (see README, Measured results)."""
