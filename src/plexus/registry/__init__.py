"""plexus.registry"""
