"""The five MAF tabular benchmarks (POWER, GAS, HEPMASS, MINIBOONE, BSDS300).

Each loader takes a root directory holding the files in the layout of the
MAF data release and applies MAF's preprocessing and train/validation/test
splits, so that NLLs are comparable with the published tables:

| name | file under root | D | MAF sizes (train / val / test) |
| --- | --- | --- | --- |
| power | `power/data.npy` | 6 | 1,659,917 / 184,435 / 204,928 |
| gas | `gas/ethylene_CO.pickle` | 8 | 852,174 / 94,685 / 105,206 |
| hepmass | `hepmass/1000_{train,test}.csv` | 21 | 315,123 / 35,013 / 174,987 |
| miniboone | `miniboone/data.npy` | 43 | 29,556 / 3,284 / 3,648 |
| bsds300 | `BSDS300/BSDS300.hdf5` | 63 | 1,000,000 / 50,000 / 250,000 |

Two offline variants cover what this project ships in `../shared/data`:
`miniboone/{val,test}.npy` (MAF's validation and test splits, already
normalised; there is no train split, so the validation split is trained on)
and `bsds300_gray.npz` (the 300 BSDS300 images, from which patches are cut
with MAF's recipe). `load` picks the standard layout when present and the
offline one otherwise, and says which in `Splits.source`.
"""

import os
from typing import Any

import numpy as np  # pylint: disable=unused-import  (the doctests use np)

from tf_ffjord.datasets.pandas_pickle import read_pickled_frame
from tf_ffjord.datasets.tabular_maf import (DIMS, NAMES, Splits, bsds300, gas,
                                            hepmass, miniboone, power)
from tf_ffjord.datasets.tabular_offline import (bsds300_patches,
                                                extract_patches,
                                                miniboone_offline)

__all__ = ["NAMES", "DIMS", "Splits", "load", "power", "gas", "hepmass",
           "miniboone", "miniboone_offline", "bsds300", "bsds300_patches",
           "extract_patches", "read_pickled_frame"]


# -- dispatch --------------------------------------------------------------

_LOADERS = {"power": power, "gas": gas, "hepmass": hepmass,
            "miniboone": miniboone, "bsds300": bsds300}


def load(name: str, root: str, **kwargs: Any) -> Splits:
  """Loads a dataset by name from its standard layout or offline variant.

  MINIBOONE falls back to `miniboone_offline` when `miniboone/data.npy` is
  absent but `miniboone/{val,test}.npy` exist; BSDS300 falls back to
  `bsds300_patches` when `BSDS300/BSDS300.hdf5` is absent but
  `bsds300_gray.npz` exists (kwargs go to it: n_train, n_val, n_test, seed;
  they are ignored for MAF's hdf5 file). GAS takes `use_pandas`.

  Args:
    name: one of `NAMES`.
    root: data root directory.
    **kwargs: passed to the loader.

  Returns:
    `Splits`.

  Raises:
    ValueError: an unknown name.
    FileNotFoundError: neither layout is present (naming the standard file).

  #### Examples

  The offline MINIBOONE layout, with small synthetic splits (point `root`
  at the real data in practice):

  >>> import os, tempfile
  >>> root = tempfile.mkdtemp()
  >>> os.makedirs(os.path.join(root, "miniboone"))
  >>> rng = np.random.default_rng(0)
  >>> for split, n in (("val", 100), ("test", 50)):
  ...   np.save(os.path.join(root, "miniboone", f"{split}.npy"),
  ...           rng.normal(size=(n, 43)))
  >>> splits = load("miniboone", root)
  >>> splits.train.shape, splits.test.shape
  ((90, 43), (50, 43))

  #### References

  [1]: George Papamakarios, Theo Pavlakou, Iain Murray. Masked Autoregressive
       Flow for Density Estimation. NeurIPS 2017.
       https://arxiv.org/abs/1705.07057
  """
  name = name.lower()
  if name not in _LOADERS:
    raise ValueError(f"Unknown tabular dataset {name!r}; expected one of "
                     f"{NAMES}.")
  if name == "miniboone" and not os.path.isfile(
      os.path.join(root, "miniboone", "data.npy")) and all(
          os.path.isfile(os.path.join(root, "miniboone", f))
          for f in ("val.npy", "test.npy")):
    return miniboone_offline(root)
  if name == "bsds300":
    if os.path.isfile(os.path.join(root, "BSDS300", "BSDS300.hdf5")):
      return bsds300(root)  # patch options do not apply to MAF's file
    if os.path.isfile(os.path.join(root, "bsds300_gray.npz")):
      return bsds300_patches(root, **kwargs)
    return bsds300(root)
  return _LOADERS[name](root, **kwargs)
