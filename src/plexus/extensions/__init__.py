"""plexus.extensions"""
