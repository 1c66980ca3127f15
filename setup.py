"""Builds plexus.core._speedups (C: the HTTP/1.1 telemetry's per-request loops). Optional: without a C
compiler the install goes on and Plexus runs the same loops in Python (plexus.core.speedups)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "plexus.core._speedups",
            ["src/plexus/core/_speedups.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
