"""Training objectives of a `FlowModel`: maximum likelihood (plus RNODE regularizers) and flow matching."""

import tensorflow as tf

from tf_ffjord import divergence, flows
from tf_ffjord import regularizers as regs
from tf_ffjord.flow_matching import flow_matching_loss

__all__ = ["Objective", "MaximumLikelihood", "FlowMatching", "get"]


class Objective:
  """What a `FlowModel`'s `train_step` minimizes.

  `loss(model, x, context)` runs under the gradient tape and returns the
  scalar loss and a dict of scalar logs (one Keras metric each, named by
  `metric_names`). `check(model)` runs at `compile` and raises on a model the
  objective cannot train.
  """

  metric_names = ()

  def check(self, model):
    del model

  def loss(self, model, x, context=None):
    raise NotImplementedError

  def get_config(self):
    return {}

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


class MaximumLikelihood(Objective):
  """Mean negative log-likelihood (nats) through ODE solves, plus penalties.

  Each solve draws fresh Hutchinson probes (distinct per replica). The
  regularizers (Finlay et al. 2020) are integrated along the same solves as
  extra ODE states, so they cost no extra dynamics evaluations; each adds
  weight x its mean integral to the loss and is logged as a metric.

  Args:
    regularization: dict name -> weight over `tf_ffjord.regularizers`
      (`"kinetic"`, `"jacobian"`, `"l1"`, `"l2"`).

  Raises:
    ValueError: an unknown regularizer or a negative weight.

  #### Examples

  >>> MaximumLikelihood({"kinetic": 0.01}).metric_names
  ('nll', 'nfe', 'nfe_backward', 'kinetic')
  """

  def __init__(self, regularization=None):
    self.regularization = dict(regularization or {})
    for name, weight in self.regularization.items():
      if name not in regs.REGULARIZERS:
        raise ValueError(f"Unknown regularizer {name!r}; expected one of "
                         f"{regs.REGULARIZERS}.")
      if not weight >= 0:
        raise ValueError(f"Regularization weights must be >= 0, got "
                         f"{name}={weight}.")
    self.metric_names = ("nll", "nfe", "nfe_backward",
                         *self.regularization)

  def check(self, model):
    if "jacobian" in self.regularization and any(
        b.trace != "hutchinson" for b in flows.ffjord_blocks(model.bijector)):
      raise ValueError("The 'jacobian' regularizer reuses the Hutchinson "
                       "probe: train with trace='hutchinson'.")

  def loss(self, model, x, context=None):
    sol = flows.solve(model.bijector, x, "inverse", context,
                      seed=divergence.replica_seed(),
                      regularizers=tuple(self.regularization))
    nll = -tf.reduce_mean(model.base.log_prob(sol.state) + sol.log_det)
    loss = nll
    logs = {"nll": nll, "nfe": sol.nfe}
    for name, weight in self.regularization.items():
      value = tf.reduce_mean(sol.regularization[name])
      loss += weight * value
      logs[name] = value
    return loss, logs

  def get_config(self):
    return {"regularization": self.regularization}


class FlowMatching(Objective):
  """Simulation-free flow matching of the model's one FFJORD block.

  Regresses the block's field onto straight paths from the data (pushed
  through any fixed pre-transform of the flow, such as a logit) to
  N(0, I) samples: no ODE solve while training. Densities, samples,
  `evaluate` and export then integrate the learned field as usual. Defined
  for a flow with a single FFJORD block next to the base and a fixed end
  time; `compile` refuses other models with a message naming what to use.
  The loss (metric `fm_loss`) is the squared error per dimension.

  Args:
    ot: pair each batch with its base samples by exact minibatch optimal
      transport (scipy; the train step then runs without XLA).
    sigma: noise around the straight paths.

  Raises:
    ValueError: a negative sigma.
  """

  metric_names = ("fm_loss",)

  def __init__(self, ot=False, sigma=0.0):
    if not sigma >= 0:
      raise ValueError(f"sigma must be >= 0, got {sigma}.")
    self.ot = bool(ot)
    self.sigma = float(sigma)

  def check(self, model):
    _, block = flows.flow_matching_parts(model.bijector)
    if any(layer.trainable_weights for layer in block.keras_layers
           if layer is not block.dynamics):
      raise ValueError("Flow matching regresses a field over a fixed time "
                       "interval and cannot learn the end time: build the "
                       "model with train_time=False.")

  def loss(self, model, x, context=None):
    pre, block = flows.flow_matching_parts(model.bijector)
    # Per dimension, so that learning rates and gradient clipping carry
    # over between data sets of different sizes.
    fm = tf.reduce_mean(flow_matching_loss(
        block.dynamics, pre(x), context, time_length=block.time_length,
        initial_time=block.initial_time, ot=self.ot,
        sigma=self.sigma)) / model.event_size
    return fm, {"fm_loss": fm}

  def get_config(self):
    return {"ot": self.ot, "sigma": self.sigma}


_NAMES = {"likelihood": MaximumLikelihood, "flow_matching": FlowMatching}


def get(objective):
  """An `Objective` from itself, `"likelihood"` or `"flow_matching"`.

  Raises:
    ValueError: an unknown name or type.
  """
  if isinstance(objective, Objective):
    return objective
  if objective in _NAMES:
    return _NAMES[objective]()
  raise ValueError(f"Unknown objective {objective!r}; expected one of "
                   f"{sorted(_NAMES)} or an Objective instance.")
