"""Datasets: 2-D toy densities, tabular benchmarks (MAF layouts), images, and resumable batch pipelines."""

from tf_ffjord.datasets import batches
from tf_ffjord.datasets import images
from tf_ffjord.datasets import tabular
from tf_ffjord.datasets import toy

__all__ = ["batches", "images", "tabular", "toy"]
