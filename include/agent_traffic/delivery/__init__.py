"""Delivery: plan chunks per destination, send them, keep the ledger of what was acknowledged."""
