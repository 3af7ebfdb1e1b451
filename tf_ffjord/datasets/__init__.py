"""Datasets: 2-D toy densities, tabular benchmarks (MAF layouts) and images."""

from tf_ffjord.datasets import images
from tf_ffjord.datasets import tabular
from tf_ffjord.datasets import toy

__all__ = ["images", "tabular", "toy"]
