"""Strategy objects given by a shorthand name: the one lookup of a name or an object of a base class."""

from collections.abc import Callable, Mapping
from typing import TypeVar

__all__ = ["resolve"]

_T = TypeVar("_T")


def resolve(value: "_T | str", cls: type[_T],
            names: Mapping[str, Callable[[], _T]], what: str) -> _T:
  """`value` itself if it is a `cls`, else the object its shorthand names.

  Args:
    value: a `cls` instance or a key of `names`.
    cls: the base class of the strategy objects.
    names: shorthand name -> a factory of its object.
    what: what the value is, for the error (e.g. `"regularizer"`).

  Raises:
    ValueError: an unknown name, or neither a name nor a `cls`.

  #### Examples

  >>> resolve("zero", int, {"zero": int}, "number")
  0
  """
  if isinstance(value, cls):
    return value
  if isinstance(value, str) and value in names:
    return names[value]()
  raise ValueError(f"Unknown {what} {value!r}; expected one of "
                   f"{sorted(names)} or a {cls.__name__} object.")
