"""Datasets: 2-D toy densities (and, in their own modules, tabular and images)."""

from tf_ffjord.datasets import toy

__all__ = ["toy"]
