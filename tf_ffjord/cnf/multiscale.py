"""`ODENVP`: FFJORD's multiscale image stack of CNF blocks with squeezes and factored-out channels."""

from collections.abc import Iterable, Sequence

import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord.cnf.regularizers import RegularizerLike, names
from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf import composite
from tf_ffjord.cnf import one_solve
from tf_ffjord.cnf.augmented_ode import Solution
from tf_ffjord.cnf.image_transforms import squeeze, unsqueeze

__all__ = ["ODENVP", "default_num_scales"]

tfb = tfp.bijectors


def default_num_scales(height: int, width: int) -> int:
  """The paper's number of scales: halvings while both sides are >= 4.

  28x28 (MNIST) gives 3 and 32x32 (CIFAR-10) 4; 8x8 gives 2.
  """
  n = 0
  h, w = int(height), int(width)
  while h >= 4 and w >= 4:
    n += 1
    h //= 2
    w //= 2
  return max(n, 1)


class ODENVP(one_solve.OneSolveBijector):
  """The multiscale stack of CNF blocks of FFJORD's image models.

  Going from data to the base (`inverse`), each scale applies `num_blocks`
  flows; every scale but the last then squeezes (space to depth), applies
  `num_blocks` more flows and factors out half of the channels, which go to
  the base distribution while the other half continue to the next scale. The
  last scale keeps everything. The factored-out parts are not dropped: they
  are packed back (by the inverse of the squeeze) into a latent `z` of the
  data's shape, so `z` has one standard-normal entry per pixel. Squeezes and
  splits are permutations, so the log-det is the sum of the flows' log-dets.

  With `num_scales=1` this is a plain stack of `num_blocks` flows at the full
  resolution (the paper's single-scale model). Build the flows for the shapes
  of `ODENVP.flow_shapes(...)`.

  Args:
    flows: the flows in data-to-base order, one per entry of
      `flow_shapes(event_shape, num_blocks, num_scales)`, each acting on
      events of that shape (e.g. `FFJORD(ConvODENet(...), event_ndims=3)`).
    event_shape: `(H, W, C)` of the data.
    num_blocks: flows before and (for all but the last scale) after each
      squeeze.
    num_scales: number of scales; default `default_num_scales(H, W)`.
    validate_args: passed to `tfb.Bijector`.
    name: name scope.

  Raises:
    ValueError: a bad event shape, H and W not divisible by
      2**(num_scales - 1), or a number of flows that does not fit.

  #### Examples

  >>> shapes = ODENVP.flow_shapes((8, 8, 1), num_blocks=1)
  >>> shapes
  [(8, 8, 1), (4, 4, 4), (4, 4, 2)]
  >>> stack = ODENVP([tfb.Identity() for _ in shapes], (8, 8, 1), 1)
  >>> stack.inverse(tf.ones([2, 8, 8, 1])).shape
  TensorShape([2, 8, 8, 1])

  #### References

  [1]: Will Grathwohl et al. FFJORD. ICLR 2019, section 4.2.
       https://arxiv.org/abs/1810.01367
  [2]: Laurent Dinh et al. Density estimation using Real NVP. ICLR 2017.
  """

  def __init__(self, flows: Iterable[tfp.bijectors.Bijector],
               event_shape: Sequence[int], num_blocks: int = 2,
               num_scales: int | None = None, validate_args: bool = False,
               name: str = "odenvp") -> None:
    parameters = dict(locals())
    event_shape = tuple(int(d) for d in event_shape)
    shapes = self.flow_shapes(event_shape, num_blocks, num_scales)
    flows = list(flows)
    if len(flows) != len(shapes):
      raise ValueError(f"ODENVP needs {len(shapes)} flows for these scales "
                       f"and blocks (shapes {shapes}), got {len(flows)}.")
    self.event_shape_ = event_shape
    self.num_blocks = int(num_blocks)
    self.num_scales = (default_num_scales(*event_shape[:2])
                       if num_scales is None else int(num_scales))
    self._flows = flows
    with tf.name_scope(name) as scope:
      super().__init__(forward_min_event_ndims=3, is_constant_jacobian=False,
                       validate_args=validate_args, parameters=parameters,
                       name=scope)

  @staticmethod
  def flow_shapes(event_shape: Sequence[int], num_blocks: int = 2,
                  num_scales: int | None = None,
                  ) -> list[tuple[int, int, int]]:
    """The event shape of every flow of the stack, in data-to-base order."""
    event_shape = tuple(int(d) for d in event_shape)
    if len(event_shape) != 3 or min(event_shape) < 1:
      raise ValueError(f"ODENVP needs an image event shape (H, W, C), got "
                       f"{event_shape}.")
    h, w, c = event_shape
    num_scales = (default_num_scales(h, w) if num_scales is None
                  else int(num_scales))
    if num_scales < 1 or int(num_blocks) < 1:
      raise ValueError(f"num_scales and num_blocks must be >= 1, got "
                       f"{num_scales} and {num_blocks}.")
    div = 2 ** (num_scales - 1)
    if h % div or w % div:
      raise ValueError(f"{num_scales} scales need H and W divisible by {div}, "
                       f"got {h}x{w}.")
    shapes = []
    for i in range(num_scales):
      shapes += [(h, w, c)] * int(num_blocks)
      if i < num_scales - 1:
        h, w, c = h // 2, w // 2, c * 4
        shapes += [(h, w, c)] * int(num_blocks)
        c -= c // 2
    return shapes

  @property
  def all_flows(self) -> list[tfp.bijectors.Bijector]:
    """Every flow in data-to-base order."""
    return list(self._flows)

  @property
  def parts(self) -> tuple[tfp.bijectors.Bijector, ...]:
    """The flows, data side first (the `OneSolveBijector` protocol)."""
    return tuple(self._flows)

  def with_parts(self, parts: Sequence[tfp.bijectors.Bijector]) -> "ODENVP":
    """This stack around other flows of the same shapes."""
    return self.copy(flows=list(parts))

  def solve(self, x: TensorLike, direction: str = "inverse",
            context: TensorLike | None = None, seed: SeedLike = None,
            regularizers: Iterable[RegularizerLike] = ()) -> Solution:
    """Runs the stack once and returns a `Solution` summed over its flows.

    Args:
      x: `[batch, H, W, C]`: data for `"inverse"`, a base sample for
        `"forward"`.
      direction: `"inverse"` (data -> base) or `"forward"`.
      context: optional conditioning tensor, passed to every flow.
      seed: optional stateless seed `[2]` of the flows' Hutchinson probes
        (flow k, counted from the data side, uses `seed + [0, k]`).
      regularizers: RNODE regularizers to integrate in every flow.

    Raises:
      ValueError: images of another shape, or an unknown direction.
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or tuple(x.shape[1:]) != self.event_shape_:
      raise ValueError(f"ODENVP expects images [batch, "
                       f"{', '.join(map(str, self.event_shape_))}], got shape "
                       f"{x.shape}.")
    one_solve.check_direction(direction)
    totals = {"log_det": tf.zeros(tf.shape(x)[:1], x.dtype),
              "nfe": tf.constant(0, tf.int32),
              **{r: 0.0 for r in names(regularizers)}}

    def run(k, h):
      s = None if seed is None else tf.convert_to_tensor(seed) + [0, k]
      sol = composite.solve(self._flows[k], h, direction, context, s,
                            regularizers)
      totals["log_det"] += sol.log_det
      totals["nfe"] += tf.cast(sol.nfe, tf.int32)
      for r in sol.regularization:
        totals[r] += sol.regularization[r]
      return sol.state

    nb, last = self.num_blocks, self.num_scales - 1
    # Flow indices of scale i: pre-squeeze [2 i nb, 2 i nb + nb), then
    # post-squeeze [2 i nb + nb, 2 (i + 1) nb).
    if direction == "inverse":
      h, zs = x, []
      for i in range(self.num_scales):
        for k in range(2 * i * nb, 2 * i * nb + nb):
          h = run(k, h)
        if i < last:
          h = squeeze(h)
          for k in range(2 * i * nb + nb, 2 * (i + 1) * nb):
            h = run(k, h)
          c = h.shape[-1] // 2
          zs.append(h[..., :c])
          h = h[..., c:]
      for z_out in reversed(zs):  # pack the factored-out parts
        h = unsqueeze(tf.concat([z_out, h], -1))
    else:
      h, zs = x, []
      for _ in range(last):  # unpack
        h = squeeze(h)
        c = h.shape[-1] // 2
        zs.append(h[..., :c])
        h = h[..., c:]
      for i in reversed(range(self.num_scales)):
        if i < last:
          h = tf.concat([zs[i], h], -1)
          for k in reversed(range(2 * i * nb + nb, 2 * (i + 1) * nb)):
            h = run(k, h)
          h = unsqueeze(h)
        for k in reversed(range(2 * i * nb, 2 * i * nb + nb)):
          h = run(k, h)
    return Solution(h, totals["log_det"],
                    {r: totals[r] for r in names(regularizers)},
                    totals["nfe"])
