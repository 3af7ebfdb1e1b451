"""Toy densities: shapes, seeds, and the exact densities used as ground truth."""

import numpy as np
import pytest

from tf_ffjord.datasets import toy


@pytest.mark.parametrize("name", toy.NAMES)
def test_sample_shape_seed_and_scale(name):
  a = toy.sample(name, 1001, seed=3)
  assert a.shape == (1001, 2) and a.dtype == np.float32
  np.testing.assert_array_equal(a, toy.sample(name, 1001, seed=3))
  assert not np.array_equal(a, toy.sample(name, 1001, seed=4))
  assert np.all(np.isfinite(a)) and 0.5 < a.std() < 3.0


def test_unknown_name():
  with pytest.raises(ValueError, match="toy dataset"):
    toy.sample("9gaussians", 10)


def test_8gaussians_entropy_matches_closed_form():
  # Well separated components: H = log 8 + log(2 pi e sigma^2).
  sigma = 0.5 / 1.414
  closed = np.log(8) + np.log(2 * np.pi * np.e * sigma ** 2)
  assert toy.entropy("8gaussians") == pytest.approx(closed, abs=0.01)


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_exact_density_integrates_to_one(name):
  side = np.linspace(-6, 6, 601)
  xx, yy = np.meshgrid(side, side)
  p = np.exp(toy.log_prob(name, np.stack([xx.ravel(), yy.ravel()], 1)))
  assert p.sum() * (side[1] - side[0]) ** 2 == pytest.approx(1.0, abs=0.02)
  # and the samples lie where the density is.
  assert np.all(np.isfinite(toy.log_prob(name, toy.sample(name, 2000, 0))))
