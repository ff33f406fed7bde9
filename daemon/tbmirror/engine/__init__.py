"""Sync engines: one incremental pass of one source into the journal (see base.py)."""
