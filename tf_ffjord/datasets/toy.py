"""The 2-D toy densities of the FFJORD paper, with its scales and noise."""

from collections.abc import Sequence

import numpy as np

__all__ = ["NAMES", "sample", "log_prob", "entropy"]

NAMES = ("8gaussians", "checkerboard", "2spirals", "pinwheel", "rings",
         "moons", "circles", "swissroll")

_SQRT2 = 1.414  # the paper's code divides 8gaussians by 1.414, not sqrt(2)


def _8gaussians(n, rng):
  s = 1.0 / np.sqrt(2.0)
  centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1),
                            (s, s), (s, -s), (-s, s), (-s, -s)])
  idx = rng.integers(0, 8, n)
  return (centers[idx] + 0.5 * rng.standard_normal((n, 2))) / _SQRT2


def _checkerboard(n, rng):
  x1 = rng.random(n) * 4 - 2
  x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
  return 2 * np.stack([x1, x2], axis=1)


def _2spirals(n, rng):
  m = (n + 1) // 2
  r = np.sqrt(rng.random((m, 1))) * 540 * (2 * np.pi) / 360
  x = -np.cos(r) * r + rng.random((m, 1)) * 0.5
  y = np.sin(r) * r + rng.random((m, 1)) * 0.5
  arm = np.hstack([x, y])
  pts = np.vstack([arm, -arm]) / 3
  return pts + 0.1 * rng.standard_normal(pts.shape)


def _pinwheel(n, rng):
  classes, per_class = 5, -(-n // 5)
  radial_std, tangential_std, rate = 0.3, 0.1, 0.25
  rads = np.linspace(0, 2 * np.pi, classes, endpoint=False)
  feats = rng.standard_normal((classes * per_class, 2))
  feats *= np.array([radial_std, tangential_std])
  feats[:, 0] += 1.0
  labels = np.repeat(np.arange(classes), per_class)
  angles = rads[labels] + rate * np.exp(feats[:, 0])
  c, s = np.cos(angles), np.sin(angles)
  rot = np.stack([c, -s, s, c], axis=1).reshape(-1, 2, 2)
  return 2 * np.einsum("ti,tij->tj", feats, rot)


def _rings(n, rng):
  per = -(-n // 4)
  angles = np.linspace(0, 2 * np.pi, per, endpoint=False)
  circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  pts = 3.0 * np.vstack([r * circle for r in (1.0, 0.75, 0.5, 0.25)])
  return pts + 0.08 * rng.standard_normal(pts.shape)


def _moons(n, rng):
  # sklearn.datasets.make_moons(noise=0.1), then * 2 + (-1, -0.2).
  n_out = n // 2
  n_in = n - n_out
  a_out = np.linspace(0, np.pi, n_out)
  a_in = np.linspace(0, np.pi, n_in)
  outer = np.stack([np.cos(a_out), np.sin(a_out)], axis=1)
  inner = np.stack([1 - np.cos(a_in), 1 - np.sin(a_in) - 0.5], axis=1)
  pts = np.vstack([outer, inner]) + 0.1 * rng.standard_normal((n, 2))
  return pts * 2 + np.array([-1.0, -0.2])


def _circles(n, rng):
  # sklearn.datasets.make_circles(factor=0.5, noise=0.08), then * 3.
  n_out = n // 2
  n_in = n - n_out
  a_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
  a_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
  outer = np.stack([np.cos(a_out), np.sin(a_out)], axis=1)
  inner = 0.5 * np.stack([np.cos(a_in), np.sin(a_in)], axis=1)
  pts = np.vstack([outer, inner]) + 0.08 * rng.standard_normal((n, 2))
  return pts * 3


def _swissroll(n, rng):
  # sklearn.datasets.make_swiss_roll(noise=1.0), columns (x, z), / 5.
  t = 1.5 * np.pi * (1 + 2 * rng.random(n))
  pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
  return (pts + 1.0 * rng.standard_normal((n, 2))) / 5


_SAMPLERS = {
    "8gaussians": _8gaussians, "checkerboard": _checkerboard,
    "2spirals": _2spirals, "pinwheel": _pinwheel, "rings": _rings,
    "moons": _moons, "circles": _circles, "swissroll": _swissroll,
}


def sample(name: str, n: int,
           seed: int | Sequence[int] | None = None) -> np.ndarray:
  """Draws `n` points of a toy density as a `[n, 2]` float32 array.

  Args:
    name: one of `NAMES`.
    n: number of points.
    seed: an int seed, a sequence of ints, or `None`.

  Returns:
    A `[n, 2]` float32 numpy array, shuffled.

  Raises:
    ValueError: unknown name or negative n.

  #### Examples

  >>> sample("8gaussians", 4, seed=0).shape
  (4, 2)
  """
  if name not in _SAMPLERS:
    raise ValueError(f"Unknown toy dataset {name!r}; expected one of {NAMES}.")
  if int(n) < 0:
    raise ValueError(f"n must be non-negative, got {n}.")
  rng = np.random.default_rng(seed)
  pts = _SAMPLERS[name](int(n), rng)
  return rng.permutation(pts)[:int(n)].astype(np.float32)


def log_prob(name: str, x: np.ndarray) -> np.ndarray:
  """Exact log-density for the toys that have one in closed form.

  Args:
    name: `"8gaussians"` or `"checkerboard"`.
    x: `[n, 2]` points.

  Returns:
    `[n]` float64 log-densities.

  Raises:
    NotImplementedError: for the other toys.
  """
  x = np.asarray(x, np.float64)
  if name == "8gaussians":
    s = 1.0 / np.sqrt(2.0)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1),
                              (s, s), (s, -s), (-s, s), (-s, -s)]) / _SQRT2
    sigma = 0.5 / _SQRT2
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    comp = -d2 / (2 * sigma ** 2) - np.log(2 * np.pi * sigma ** 2)
    m = comp.max(1)
    return m + np.log(np.exp(comp - m[:, None]).mean(1))
  if name == "checkerboard":
    x1, x2 = x[:, 0] / 2, x[:, 1] / 2
    inside = (np.abs(x1) <= 2) & (np.abs(x2) <= 2)
    black = (np.floor(x1) + np.floor(x2)) % 2 == 0
    return np.where(inside & black, -np.log(32.0), -np.inf)
  raise NotImplementedError(f"No closed-form density for {name!r}.")


def entropy(name: str, n: int = 200_000,
            seed: int | Sequence[int] | None = 0) -> float:
  """Differential entropy in nats: the best NLL a model can reach.

  Monte Carlo over `n` samples of the exact density (closed form for
  checkerboard: log 32).
  """
  if name == "checkerboard":
    return float(np.log(32.0))
  return float(-log_prob(name, sample(name, n, seed)).mean())
