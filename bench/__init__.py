"""pumpguard's benchmarks (pytest-benchmark); see bench/README.md.

A package so that ``bench/conftest.py`` is ``bench.conftest`` to pytest and
mypy, and never collides with a ``conftest`` module under ``tests/``.
"""
