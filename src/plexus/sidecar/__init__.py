"""plexus.sidecar"""
