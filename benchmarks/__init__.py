"""Benchmarks: side-by-side runs whose results are committed under benchmarks/results/."""
