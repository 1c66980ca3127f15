"""Plexus: a service mesh in Python in the shape of SOFAMesh."""

__version__ = "0.1.0"
