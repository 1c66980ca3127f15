"""plexus.demo"""
