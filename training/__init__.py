"""Workstation side: train one DCGAN generator per product class on normal samples only."""
