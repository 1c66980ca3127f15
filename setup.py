"""Builds plexus.core._speedups (C: the HTTP/1.1 telemetry's per-request loops) and
plexus.sidecar._direct_log (C: the access log's O_DIRECT writer thread). Optional: without a C compiler the
install goes on, Plexus runs the same loops in Python (plexus.core.speedups) and writes the access log
through the page cache."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "plexus.core._speedups",
            ["src/plexus/core/_speedups.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "plexus.sidecar._direct_log",
            ["src/plexus/sidecar/_direct_log.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
