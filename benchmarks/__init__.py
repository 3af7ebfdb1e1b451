"""Benchmarks of tf-ffjord (run as scripts, e.g. `python -m benchmarks.speed`)."""

__all__ = []
