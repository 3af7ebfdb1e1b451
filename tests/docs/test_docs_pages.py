"""The documentation's promises: every page's code runs, every public name has an API page, the flag tables cover every flag."""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys

import pytest

import tf_ffjord

__all__ = []

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CLIS = ("training.toy_cli", "training.tabular_cli", "training.images_cli", "training.vae_cli")


def _pages():
  pages = [os.path.join(ROOT, "README.md")]
  for folder, dirs, files in os.walk(DOCS):
    dirs[:] = sorted(d for d in dirs if d not in ("results", "hooks"))
    pages += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".md")]
  return pages


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def python_blocks(text):
  """`(first line, code)` of every ```python fence of a Markdown text, in order."""
  return [(text.count("\n", 0, m.start()) + 2, m.group(1))
          for m in FENCE.finditer(text)]


PAGES_WITH_CODE = [p for p in _pages() if python_blocks(_read(p))]
# Pages whose blocks are each whole programs, run one per fresh process (the
# extension points must work without state left by other code).
FRESH_PROCESS_PAGES = [os.path.join(DOCS, "guide", "extending.md")]
FRESH_BLOCKS = [(os.path.relpath(page, ROOT), line, code)
                for page in FRESH_PROCESS_PAGES
                for line, code in python_blocks(_read(page))]


def test_fence_finder_sees_blocks_and_skips_other_languages():
  text = "a\n```python\nx = 1\n```\n```sh\nls\n```\n```python\ny = x\n```\n"
  assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x\n")]


IN_PROCESS_PAGES = [p for p in PAGES_WITH_CODE if p not in FRESH_PROCESS_PAGES]


@pytest.mark.parametrize(
    "page", IN_PROCESS_PAGES, ids=[os.path.relpath(p, ROOT) for p in IN_PROCESS_PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
  """A page's python blocks run in order in one fresh namespace, in an empty directory."""
  monkeypatch.chdir(tmp_path)  # files the examples write land here
  namespace = {"__name__": "__docs__"}
  name = os.path.relpath(page, ROOT)
  for line, code in python_blocks(_read(page)):
    exec(compile(code, f"{name}, block at line {line}", "exec"), namespace)  # pylint: disable=exec-used


def test_extending_page_has_its_seven_examples():
  assert len(FRESH_BLOCKS) == 7, [line for _, line, _ in FRESH_BLOCKS]


@pytest.mark.parametrize("name, line, code", FRESH_BLOCKS,
                         ids=[f"{n}:{line}" for n, line, _ in FRESH_BLOCKS])
def test_block_runs_in_a_fresh_process(name, line, code, tmp_path,
                                       subprocess_env):
  """One block, as the page shows it, is the whole program of a new Python."""
  env = dict(subprocess_env, TF_FFJORD_JIT_COMPILE="0")
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 0, (
      f"{name}, block at line {line}, exited {done.returncode}:\n"
      f"{done.stderr[-3000:]}")


def _api_text():
  api = os.path.join(DOCS, "api")
  return "\n".join(_read(os.path.join(api, f)) for f in sorted(os.listdir(api))
                   if f.endswith(".md"))


def test_every_public_name_has_an_api_entry():
  documented = set(re.findall(r"^::: tf_ffjord(?:\.\w+)*\.(\w+)$", _api_text(),
                              re.MULTILINE))
  missing = sorted(set(tf_ffjord.__all__) - documented)
  assert not missing, (f"tf_ffjord.__all__ names without a '::: ' entry under "
                       f"docs/api/: {missing}")


def test_api_entries_name_real_objects():
  for path in re.findall(r"^::: (tf_ffjord\S*)$", _api_text(), re.MULTILINE):
    module, _, attr = path.rpartition(".")
    try:
      importlib.import_module(path)
    except ImportError:
      assert hasattr(importlib.import_module(module), attr), path


def _flags_hook():
  spec = importlib.util.spec_from_file_location(
      "docs_flags_hook", os.path.join(DOCS, "hooks", "flags.py"))
  hook = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(hook)
  return hook


@pytest.mark.parametrize("module_name", CLIS)
def test_flag_table_lists_every_config_field(module_name):
  """The generated table has a row per dataclass field, with its default."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  module = importlib.import_module(module_name)
  configs = [v for v in vars(module).values()
             if dataclasses.is_dataclass(v) and isinstance(v, type)
             and v.__module__ == module_name]
  assert len(configs) == 1, configs
  table = _flags_hook().flag_table(module_name)
  rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
  for field in dataclasses.fields(configs[0]):
    flag = "`--" + field.name.replace("_", "-") + "`"
    assert flag in rows, f"{flag} missing from the {module_name} table"
  assert "`--strategy`" in rows


def test_flag_markers_name_cli_modules():
  for page in _pages():
    for module_name in re.findall(r"<!-- cli-flags: ([\w.]+) -->", _read(page)):
      assert module_name in CLIS, (page, module_name)


def test_readme_is_short_and_keeps_its_two_commands():
  text = _read(os.path.join(ROOT, "README.md"))
  assert len(text.splitlines()) <= 120
  first = text.split("```")[1].splitlines()
  assert first[1].startswith("pip install -e \".[plot]\" && python -m training.toy_cli")
  assert first[2].startswith("pip install -e \".[test]\" && python -m pytest")
