"""Griffe extension: doctest examples in docstrings become fenced `pycon` code.

Markdown reads a line that starts with `>>>` as a nested block quote; the
docstrings' `#### Examples` are doctests (run by `--doctest-modules`), so each
run of `>>>` lines with its output is fenced before mkdocstrings renders it.
"""

import griffe

__all__ = ["DoctestFences", "fence_doctests"]


def fence_doctests(text):
  """Wraps every doctest run (a `>>>` line up to the next blank line) in a fence."""
  out, in_test = [], False
  for line in text.splitlines():
    stripped = line.lstrip()
    if not in_test and stripped.startswith(">>>"):
      indent = line[:len(line) - len(stripped)]
      out.append(indent + "```pycon")
      in_test = True
    elif in_test and not stripped:
      out.append(indent + "```")
      in_test = False
    out.append(line)
  if in_test:
    out.append(indent + "```")
  return "\n".join(out)


class DoctestFences(griffe.Extension):
  """Fences the doctests of every object's docstring."""

  def on_instance(self, *, obj, **kwargs):  # pylint: disable=unused-argument
    if obj.docstring is not None and ">>>" in obj.docstring.value:
      obj.docstring.value = fence_doctests(obj.docstring.value)
