"""Smoke tests of the benchmark harnesses (bench/): they run end to end, with no speed assertions."""
