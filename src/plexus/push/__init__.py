"""plexus.push"""
