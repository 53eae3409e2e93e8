"""Temporal activities: every exchange call the kernel makes, through ccxt's unified API."""
