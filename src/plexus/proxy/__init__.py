"""plexus.proxy"""
