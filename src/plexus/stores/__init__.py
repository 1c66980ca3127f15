"""plexus.stores"""
