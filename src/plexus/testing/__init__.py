"""Helpers for Plexus's own tests and for people who write extensions: processes on port 0, cleanup by PID."""

from plexus.testing.procs import ManagedProcess, free_port, wait_for

__all__ = ["ManagedProcess", "free_port", "wait_for"]
