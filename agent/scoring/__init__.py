"""Scoring: bundles, Algorithm 1's search loop, and engine backends (one plugin file each)."""
