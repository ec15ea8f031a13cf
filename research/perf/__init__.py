"""Measurement: benchmarks of the train step and the data pipeline (used by scripts/benchmark.py).

Owns timing loops and their reports; builds runs only through research.train.program and
research.data, so what it measures is exactly what training runs.
"""
