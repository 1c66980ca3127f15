"""The benchmark harness's parts: processes under test, the load generator, the accounting and the report.

``bench/http1.py`` puts them together. Nothing here is imported by Plexus itself.
"""
