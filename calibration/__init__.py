"""Workstation side: thresholds from labelled scores, and the paper's experiments."""
