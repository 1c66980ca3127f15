"""plexus.config"""
