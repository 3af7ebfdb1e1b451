"""Experiments of the FFJORD paper as command-line programs, one per module."""
