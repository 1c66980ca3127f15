"""plexus.cli"""
