"""Staging: write events and quarantine to Parquet, validate them, hold what is bad."""
