"""plexus.transport"""
