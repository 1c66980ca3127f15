"""plexus.clients"""
