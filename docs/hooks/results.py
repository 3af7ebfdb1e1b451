"""MkDocs hook: tables read from the result files under docs/results/.

A page line `<!-- results-csv: results/toy/curve.csv -->` becomes a Markdown
table of that CSV file (path relative to docs/), numbers rounded to 4
significant digits, so a page shows the committed numbers themselves.
"""

import csv
import os
import re

__all__ = ["csv_table", "on_page_markdown"]

MARKER = re.compile(r"^<!-- results-csv: ([\w./-]+) -->$", re.MULTILINE)
DOCS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _number(text):
  try:
    value = float(text)
  except ValueError:
    return text
  return str(int(value)) if value.is_integer() else f"{value:.4g}"


def csv_table(relative_path):
  """A Markdown table of the CSV file at docs/`relative_path`."""
  with open(os.path.join(DOCS, relative_path), newline="",
            encoding="utf-8") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise ValueError(f"{relative_path} is empty")
  lines = ["| " + " | ".join(rows[0]) + " |",
           "| " + " | ".join("---" for _ in rows[0]) + " |"]
  lines += ["| " + " | ".join(_number(v) for v in row) + " |"
            for row in rows[1:]]
  return "\n".join(lines)


def on_page_markdown(markdown, **kwargs):  # pylint: disable=unused-argument
  """Replaces each `<!-- results-csv: PATH -->` line with PATH's table."""
  return MARKER.sub(lambda m: csv_table(m.group(1)), markdown)
