"""Tests of the benchmark harness (``bench/``): it runs end to end and writes complete results."""
