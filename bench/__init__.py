"""Benchmarks of the reconciler: fleet generation (:mod:`bench.fleetgen`) and the performance harness
(:mod:`bench.run`: load, cold / no-op / incremental cycles, commit-to-live latency, peak RSS, each against a floor).

Run with ``./dev bench`` (or ``python -m bench.run --help``); results and method in ``docs/performance.md``.
"""
