"""The files of a checkpoint: atomic writes, checksums, and errors that name the file.

Every JSON file carries the SHA-256 of its own content (`"checksum"`, over
the canonical JSON of the other entries), and every weights file's SHA-256
is recorded in the JSON that refers to it: an altered file of any kind, a
hand-edited epoch included, is refused by name.
"""

from collections.abc import Mapping
import hashlib
import json
import os
from typing import Any

import h5py
import numpy as np

__all__ = ["CheckpointError", "layout", "read_json", "sha256", "write_json"]

_CHECKSUM = "checksum"


class CheckpointError(ValueError):
  """A checkpoint file is corrupted, truncated, altered, missing, or of another model."""


def _digest(payload):
  text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes `payload` and its checksum atomically: a kill leaves the old file or the new one.

  >>> import tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
  >>> write_json(path, {"epoch": 3})
  >>> read_json(path, "progress file")
  {'epoch': 3}
  """
  payload = dict(payload)
  payload[_CHECKSUM] = _digest(payload)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f)
  os.replace(tmp, path)


def read_json(path: str, what: str) -> dict[str, Any]:
  """Reads a JSON file written by `write_json` and checks its checksum.

  Args:
    path: the file.
    what: what it is, for the message (e.g. "checkpoint progress file").

  Returns:
    The payload, without its checksum.

  Raises:
    CheckpointError: naming `path`: unreadable, not JSON, without a
      checksum, or altered since it was written.
  """
  try:
    with open(path, encoding="utf-8") as f:
      payload = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"The {what} {path} is corrupted or truncated, or "
                          f"unreadable ({type(e).__name__}: {e}).") from e
  if not isinstance(payload, dict) or _CHECKSUM not in payload:
    raise CheckpointError(f"The {what} {path} is corrupted or truncated: it "
                          "has no checksum (edited, or not written by "
                          "tf_ffjord's Checkpoint).")
  checksum = payload.pop(_CHECKSUM)
  if checksum != _digest(payload):
    raise CheckpointError(f"The {what} {path} is corrupted or truncated: its "
                          "content does not match its checksum (the file was "
                          "altered after it was written).")
  return payload


def sha256(path: str) -> str:
  """The SHA-256 of a file's bytes, as hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def layout(path: str) -> dict[str, tuple[int, ...]]:
  """{key: shape} of every array in a Keras weights file (reads them all)."""
  found: dict[str, tuple[int, ...]] = {}
  with h5py.File(path, "r") as f:
    f.visititems(lambda name, obj: found.__setitem__(
        name, np.shape(obj[()])) if isinstance(obj, h5py.Dataset) else None)
  return found
