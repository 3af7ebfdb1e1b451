"""MkDocs hook: CLI flag tables generated from the training CLIs themselves.

A page line `<!-- cli-flags: training.toy_cli -->` becomes the table of every flag
of `python -m training.toy_cli`: the hook runs that module's `main([])` until its
argument parser is built and reads the parser's own actions (flag, default,
choices, help), so the table cannot drift from the code. No training runs:
the parser's `parse_args` is intercepted before it returns.
"""

import argparse
import contextlib
import importlib
import os
import re
import sys

__all__ = ["cli_parser", "flag_table", "on_page_markdown"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the CLIs import TensorFlow

MARKER = re.compile(r"^<!-- cli-flags: ([\w.]+) -->$", re.MULTILINE)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


class _Parsed(Exception):
  """Raised in place of returning from the CLI's final `parse_args`."""

  def __init__(self, parser):
    super().__init__("parser built")
    self.parser = parser


@contextlib.contextmanager
def _intercept_parse_args():
  original = argparse.ArgumentParser.parse_args

  def parse_args(self, *args, **kwargs):
    raise _Parsed(self)

  argparse.ArgumentParser.parse_args = parse_args
  try:
    yield
  finally:
    argparse.ArgumentParser.parse_args = original


def cli_parser(module_name):
  """The `argparse.ArgumentParser` that `module_name.main([])` builds."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  module = importlib.import_module(module_name)
  with _intercept_parse_args():
    try:
      module.main([])
    except _Parsed as parsed:
      return parsed.parser
  raise RuntimeError(f"{module_name}.main([]) returned without parsing its "
                     "arguments; the flag table cannot be generated.")


def _cell(text):
  return str(text).replace("|", "\\|").replace("\n", " ")


def _default(action):
  if action.default is None or action.default == argparse.SUPPRESS:
    return ""
  value = action.default
  if isinstance(value, tuple):
    value = ",".join(str(v) for v in value)
  elif isinstance(value, bool):
    value = str(value).lower()
  return f"`{_cell(value)}`"


_KINDS = {"_bool": "true or false", "_ints": "integers, as `64,64`",
          "int": "integer", "float": "number", "str": "text"}


def _kind(action):
  name = getattr(action.type, "__name__", "")
  return _KINDS.get(name, name)


def flag_table(module_name):
  """A Markdown table of every flag of the CLI `python -m module_name`."""
  rows = ["| flag | default | values | what it does |",
          "| --- | --- | --- | --- |"]
  for action in cli_parser(module_name)._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._HelpAction):  # pylint: disable=protected-access
      continue
    flag = ", ".join(f"`{s}`" for s in action.option_strings)
    values = (", ".join(f"`{c}`" for c in action.choices)
              if action.choices else _kind(action))
    rows.append(f"| {flag} | {_default(action)} | {values} | "
                f"{_cell(action.help or '')} |")
  return "\n".join(rows)


def on_page_markdown(markdown, **kwargs):  # pylint: disable=unused-argument
  """Replaces each `<!-- cli-flags: MODULE -->` line with MODULE's flag table."""
  return MARKER.sub(lambda m: flag_table(m.group(1)), markdown)
