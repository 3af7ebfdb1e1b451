"""Benchmarks of tf-ffjord (run as scripts, e.g. `python -m benchmarks.speed`)."""

import argparse
from collections.abc import Callable
import json
import os
from typing import Any

__all__ = ["DATA_DIR", "add_table_option", "printed_table"]

# The project's data folder (see ../shared/data/README); TF_FFJORD_DATA
# points the benchmarks elsewhere.
DATA_DIR = os.environ.get("TF_FFJORD_DATA",
                          os.path.join(os.path.dirname(__file__), "..", "..",
                                       "shared", "data"))


def add_table_option(parser: argparse.ArgumentParser) -> None:
  """`--table JSON`: print the table of a results file instead of measuring."""
  parser.add_argument("--table", metavar="JSON",
                      help="print the table of a results file and exit")


def printed_table(args: argparse.Namespace,
                  format_table: Callable[[Any], str]) -> bool:
  """Prints the table of `args.table`'s results if given; whether it did."""
  if not args.table:
    return False
  with open(args.table) as f:
    print(format_table(json.load(f)))
  return True
