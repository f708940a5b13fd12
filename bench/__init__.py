"""Benchmarks. Each prints its rate beside a baseline measured in the same run (see README.md)."""
