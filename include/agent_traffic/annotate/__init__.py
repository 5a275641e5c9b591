"""Annotate: which agent, which provider and purpose, verified or spoofed, and what was fetched."""
