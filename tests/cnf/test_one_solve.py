"""The one-solve bijector adapter and the walk over composite flows (cnf/one_solve.py, cnf/composite.py)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import FFJORD, ODENVP, make_solver
from tf_ffjord.cnf import composite
from tf_ffjord.cnf.one_solve import OneSolveBijector, check_direction

tfb, tfd = tfp.bijectors, tfp.distributions

pytestmark = pytest.mark.filterwarnings("ignore:FFJORD. the dynamics")

RATE = -0.5  # dz/dt = RATE z: log|det dz(T)/dx| = RATE * T * event size


def block(event_ndims=1, time_length=1.0):
  return FFJORD(lambda t, z: RATE * z, time_length=time_length,
                trace="exact", solver=make_solver("rk4", step_size=0.25),
                event_ndims=event_ndims)


def count_solves(*bijectors):
  """Replaces each bijector's `solve` by one that counts its calls."""
  counts = [0] * len(bijectors)
  for k, b in enumerate(bijectors):
    def counted(*args, _k=k, _solve=b.solve, **kwargs):
      counts[_k] += 1
      return _solve(*args, **kwargs)
    object.__setattr__(b, "solve", counted)  # outside tf.Module tracking
  return counts


def test_log_prob_of_ffjord_blocks_in_a_chain_costs_one_solve_per_block():
  blocks = [block(time_length=1.0), block(time_length=0.5)]
  flow = tfb.Chain([blocks[0], tfb.Shift([1.0, -1.0]), blocks[1]])
  dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)),
                                     flow)
  counts = count_solves(*blocks)
  x = tf.constant([[0.3, -0.2], [1.0, 2.0], [0.0, 0.5]])
  log_prob = tf.function(dist.log_prob)(x)
  assert counts == [1, 1]
  # Ground truth: data to base, z = (x e^{-0.5} - shift) e^{-0.25}, and the
  # log-det is RATE * 1.5 * 2 (T = 1 + 0.5, D = 2).
  z = (x.numpy() * np.exp(RATE) - [1.0, -1.0]) * np.exp(RATE * 0.5)
  want = (tfd.MultivariateNormalDiag(tf.zeros(2)).log_prob(z).numpy()
          + RATE * 1.5 * 2)
  np.testing.assert_allclose(log_prob, want, rtol=1e-5)


def test_log_prob_of_odenvp_costs_one_solve_per_block():
  shapes = ODENVP.flow_shapes((4, 4, 1), num_blocks=1, num_scales=2)
  blocks = [block(event_ndims=3) for _ in shapes]
  stack = ODENVP(blocks, (4, 4, 1), num_blocks=1, num_scales=2)
  base = tfd.Independent(tfd.Normal(tf.zeros([4, 4, 1]), 1.0), 3)
  dist = tfd.TransformedDistribution(base, stack)
  counts = count_solves(stack, *blocks)
  x = tf.random.stateless_normal([3, 4, 4, 1], seed=[1, 2])
  log_prob = tf.function(dist.log_prob)(x)
  assert counts == [1] * (1 + len(blocks))
  # Squeezes and splits are permutations: every pixel passes one block per
  # shape it takes, so the log-det is RATE times the sizes of the shapes.
  log_det = RATE * sum(np.prod(s) for s in shapes)
  sol = stack.solve(x, "inverse")
  np.testing.assert_allclose(sol.log_det, [log_det] * 3, rtol=1e-5)
  np.testing.assert_allclose(log_prob, base.log_prob(sol.state) + log_det,
                             rtol=1e-5)


@pytest.mark.parametrize("first", ["state", "log_det"])
def test_state_and_log_det_of_one_input_cost_one_solve_in_either_order(
    first):
  flow = block()
  counts = count_solves(flow)
  x = tf.constant([[0.3, -0.2]])

  @tf.function
  def both(x):
    calls = {"state": lambda: flow.inverse(x),
             "log_det": lambda: flow.inverse_log_det_jacobian(x, 1)}
    out = calls[first]()
    return out, calls[{"state": "log_det", "log_det": "state"}[first]]()

  out = both(x)
  assert counts == [1]
  state, log_det = out if first == "state" else out[::-1]
  np.testing.assert_allclose(state, x * np.exp(RATE), rtol=1e-5)
  np.testing.assert_allclose(log_det, [RATE * 2], rtol=1e-5)
  # The forward log-det of the state is the opposite, from the same solve.
  np.testing.assert_allclose(
      tf.function(lambda x: (flow.inverse(x),
                             flow.forward_log_det_jacobian(flow.inverse(x), 1))
                  )(x)[1], [-RATE * 2], rtol=1e-5)
  assert counts == [2]


class Series(tfb.Composition):
  """A user's own composition: its bijectors in series, as a Chain does."""

  def __init__(self, bijectors, name="series"):
    parameters = dict(locals())
    super().__init__(bijectors=list(bijectors), name=name,
                     parameters=parameters, forward_min_event_ndims=1,
                     inverse_min_event_ndims=1)

  def _walk_forward(self, step_fn, x, **kwargs):
    for b in reversed(self.bijectors):
      x = step_fn(b, x, **kwargs.get(b.name, {}))
    return x

  def _walk_inverse(self, step_fn, y, **kwargs):
    for b in self.bijectors:
      y = step_fn(b, y, **kwargs.get(b.name, {}))
    return y


def test_a_users_composition_is_walked_block_by_block():
  blocks = [block(), block(time_length=2.0)]
  flow = Series([blocks[0], tfb.Scale(2.0), blocks[1]])
  assert composite.ffjord_blocks(flow) == blocks
  x = tf.constant([[0.3, -0.2], [1.0, 2.0]])
  sol = composite.solve(flow, x, "inverse")
  # The walk sums what only it sees (the NFE) and agrees with TFP's own.
  assert int(sol.nfe) == sum(int(b.solve(x).nfe) for b in blocks) > 0
  np.testing.assert_allclose(sol.state, flow.inverse(x), rtol=1e-6)
  np.testing.assert_allclose(
      sol.log_det, flow.inverse_log_det_jacobian(x, event_ndims=1), rtol=1e-6)
  np.testing.assert_allclose(sol.log_det, [RATE * 3 * 2 - 2 * np.log(2)] * 2,
                             rtol=1e-5)
  back = composite.solve(flow, sol.state, "forward")
  np.testing.assert_allclose(back.state, x, rtol=1e-4)  # RK4 both ways
  copy = composite.with_options(flow, solver="euler")
  assert isinstance(copy, Series)
  assert [b.solver.method.name for b in composite.ffjord_blocks(copy)] == [
      "euler", "euler"]


def test_one_direction_check_for_every_walk():
  x = tf.zeros([1, 4, 4, 1])
  stack = ODENVP([tfb.Identity()] * 3, (4, 4, 1), num_blocks=1, num_scales=2)
  for run in (lambda: check_direction("up"),
              lambda: composite.solve(tfb.Exp(), x, "up"),
              lambda: stack.solve(x, "up"),
              lambda: block().solve(tf.zeros([1, 2]), "up")):
    with pytest.raises(ValueError, match="direction must be 'inverse'"):
      run()


def test_a_subclass_that_lists_no_parts_cannot_be_rebuilt_around_some():
  with pytest.raises(NotImplementedError, match="override parts"):
    block().with_parts([tfb.Identity()])
  assert isinstance(block(), OneSolveBijector) and block().parts == ()
