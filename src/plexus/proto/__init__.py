"""plexus.proto"""
