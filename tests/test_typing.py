"""The type hints: mypy passes over the package, and every public signature is annotated."""

import configparser
import importlib
import importlib.util
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import tf_ffjord

__all__ = []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Methods checked besides the public ones.
_DUNDERS = ("__init__", "__new__", "__call__")


def _skip_mypy_if_missing():
  if importlib.util.find_spec("mypy") is None:
    pytest.skip("mypy is not installed: `pip install mypy` (or the `test` "
                "extra) to check the type hints.")


def _mypy(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "mypy", *args],
                        cwd=cwd, capture_output=True, text=True, timeout=600,
                        check=False)


def _missing(fn, what, bound):
  """The parameters (and `-> return`) of `fn` that have no annotation."""
  code = getattr(fn, "__code__", None)
  if code is not None and code.co_filename.startswith("<"):
    return []  # generated (a namedtuple's __new__): no source to annotate
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):  # a builtin: nothing to read
    return []
  params = list(sig.parameters.values())
  if bound and params and params[0].name in ("self", "cls", "_cls"):
    params = params[1:]
  out = [f"{what}({p.name})" for p in params
         if p.annotation is inspect.Parameter.empty]
  if sig.return_annotation is inspect.Signature.empty:
    out.append(f"{what} -> ?")
  return out


def unannotated(obj):
  """What lacks an annotation on the public signature of a function or class.

  For a class: its constructor, `__call__`, and every public method and
  property defined in it or in one of its tf_ffjord bases.
  """
  if not inspect.isclass(obj):
    return _missing(obj, obj.__name__, bound=False)
  out = []
  for klass in obj.__mro__:
    if not klass.__module__.startswith("tf_ffjord"):
      continue
    for name, attr in vars(klass).items():
      if name.startswith("_") and name not in _DUNDERS:
        continue
      what = f"{klass.__name__}.{name}"
      if isinstance(attr, property):
        if attr.fget is not None:
          out += [m for m in _missing(attr.fget, what, bound=True)
                  if m.endswith("-> ?")]
      elif isinstance(attr, staticmethod):  # __new__ too: it takes cls
        out += _missing(attr.__func__, what, bound=name == "__new__")
      elif isinstance(attr, classmethod):
        out += _missing(attr.__func__, what, bound=True)
      elif inspect.isfunction(attr):
        if name == "__init__" and getattr(klass, "_is_protocol", False):
          continue  # typing.Protocol's own placeholder constructor
        out += _missing(attr, what, bound=True)
  return out


def public_objects():
  """{qualified name: object} of every function and class in an `__all__` of tf_ffjord."""
  modules = [tf_ffjord] + [
      importlib.import_module(m.name) for m in pkgutil.walk_packages(
          tf_ffjord.__path__, "tf_ffjord.")]
  found = {}
  for module in modules:
    for name in getattr(module, "__all__", ()):
      obj = getattr(module, name)
      if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        continue
      if not obj.__module__.startswith("tf_ffjord"):
        continue
      # Re-exports are checked once, under the module that defines them.
      found[f"{obj.__module__}.{obj.__qualname__}"] = obj
  return found


def test_mypy_passes():
  _skip_mypy_if_missing()
  result = _mypy("tf_ffjord")
  assert result.returncode == 0, (
      f"mypy found errors in tf_ffjord:\n{result.stdout}{result.stderr}")


def test_mypy_reads_the_hints_of_user_code(tmp_path):
  # The hints reach code that uses the package: a wrong argument type is an
  # error, a right one is not.
  _skip_mypy_if_missing()
  bad = tmp_path / "user_code.py"
  bad.write_text("from tf_ffjord.solvers import make_solver\n"
                 "make_solver('dopri5', rtol='tight')\n"
                 "make_solver('dopri5', rtol=1e-6)\n")
  result = _mypy(str(bad), "--cache-dir", str(tmp_path / "cache"))
  assert result.returncode == 1, result.stdout + result.stderr
  assert "user_code.py:2: error" in result.stdout, result.stdout
  assert '"rtol"' in result.stdout, result.stdout
  assert "user_code.py:3" not in result.stdout, result.stdout


def test_every_public_signature_is_annotated():
  found = public_objects()
  assert "tf_ffjord.cnf.ffjord.FFJORD" in found  # the walk sees the package
  missing = {name: unannotated(obj) for name, obj in found.items()}
  missing = {name: m for name, m in missing.items() if m}
  assert not missing, f"Public signatures without type hints: {missing}"


def test_unannotated_finds_what_is_missing():
  def f(x, y: int, *args: int, **kwargs) -> int:
    del x, args, kwargs
    return y

  class Layer:

    def __init__(self, units: int) -> None:
      self.units = units

    @property
    def size(self):
      return self.units

    @classmethod
    def build(cls, config: dict):
      return cls(**config)

    def _private(self, z):
      return z

  class Sub(Layer):

    def call(self, x: float) -> float:
      return x

  Layer.__module__ = Sub.__module__ = "tf_ffjord.example"
  assert unannotated(f) == ["f(x)", "f(kwargs)"]
  assert unannotated(Layer) == ["Layer.size -> ?", "Layer.build -> ?"]
  assert unannotated(Sub) == ["Layer.size -> ?", "Layer.build -> ?"]
  Sub.__module__ = "elsewhere"  # bases outside tf_ffjord are not checked
  Layer.__module__ = "elsewhere"
  assert unannotated(Sub) == []


def test_the_package_ships_its_marker():
  assert os.path.isfile(os.path.join(ROOT, "tf_ffjord", "py.typed"))
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, "setup.cfg"))
  assert config["options.package_data"]["tf_ffjord"].split() == ["py.typed"]
