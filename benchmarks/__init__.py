"""Benchmarks of tf-ffjord (run as scripts, e.g. `python -m benchmarks.speed`)."""

import os

__all__ = ["DATA_DIR"]

# The project's data folder (see ../shared/data/README); TF_FFJORD_DATA
# points the benchmarks elsewhere.
DATA_DIR = os.environ.get("TF_FFJORD_DATA",
                          os.path.join(os.path.dirname(__file__), "..", "..",
                                       "shared", "data"))
