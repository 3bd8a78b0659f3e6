"""Benchmarks: `make bench` runs every ``bench_*`` module here and prints its figures.

Each module defines ``TITLE`` and ``run() -> list[str]`` (the lines to print). Benchmarks
measure; they never assert timings (targets are printed next to the figures).
"""
