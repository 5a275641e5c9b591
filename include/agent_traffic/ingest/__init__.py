"""Ingest: find log objects in a store, decompress them, parse lines into canonical events."""
