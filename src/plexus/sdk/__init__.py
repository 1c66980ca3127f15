"""plexus.sdk"""
