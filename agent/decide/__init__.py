"""Decisions: a score against the calibrated threshold of its class."""
