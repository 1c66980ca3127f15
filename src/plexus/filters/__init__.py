"""plexus.filters"""
