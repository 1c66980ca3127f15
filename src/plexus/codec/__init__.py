"""plexus.codec"""
