"""The implementations the speed benchmark times: tf-ffjord and tfp's FFJORD."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord.cnf.ffjord import FFJORD

__all__ = ["Ours", "TFP", "IMPLS"]

tfb = tfp.bijectors
tfd = tfp.distributions


def _base_log_prob(z, event_ndims):
  axes = list(range(1, 1 + event_ndims))
  d = float(np.prod(z.shape[1:]))
  return (-0.5 * tf.reduce_sum(tf.square(z), axes)
          - 0.5 * d * np.log(2 * np.pi))


class Ours:
  """tf_ffjord.FFJORD with its Dormand-Prince and adjoint (or backprop)."""

  def __init__(self, net, case, xla=True, gradient="adjoint", rtol=None,
               atol=None):
    self.net = net
    self.xla = xla
    nd = len(case.event_shape)
    # The step itself is compiled (or not) here: the solve adds no XLA.
    self.bij = FFJORD(net, trace="hutchinson", event_ndims=nd,
                      jit_compile=False,
                      solver=tf_ffjord.make_solver(
                          "dopri5", rtol=rtol or case.rtol,
                          atol=atol or case.atol),
                      adjoint=gradient)
    self.opt = keras.optimizers.Adam(1e-3)
    self.opt.build(net.trainable_variables)
    bij, opt = self.bij, self.opt

    def step(x):
      with tf.GradientTape() as tape:
        sol = bij.solve(x, "inverse")
        loss = -tf.reduce_mean(_base_log_prob(sol.state, nd) + sol.log_det)
      variables = net.trainable_variables
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))
      return loss, sol.nfe, sol.nfe + bij.nfe_backward.read_value()

    def log_prob(x):
      sol = bij.solve(x, "inverse")
      return _base_log_prob(sol.state, nd) + sol.log_det, sol.nfe

    self.step = tf.function(step, jit_compile=xla)
    self.log_prob = tf.function(log_prob, jit_compile=xla)


class TFP:
  """tfp.bijectors.FFJORD with tfp.math.ode.DormandPrince (its adjoint)."""

  def __init__(self, net, case, rtol=None, atol=None):
    self.net = net
    self.xla = False  # its vectorized_map trace recompiles under XLA
    nd = len(case.event_shape)
    counter = tf.Variable(0, trainable=False, dtype=tf.int32)
    self.counter = counter

    def f(t, x):
      with tf.control_dependencies([counter.assign_add(1)]):
        return net(t, x)

    solver = tfp.math.ode.DormandPrince(rtol=rtol or case.rtol,
                                        atol=atol or case.atol,
                                        max_num_steps=1000)
    bij = tfb.FFJORD(state_time_derivative_fn=f, ode_solve_fn=solver.solve,
                     trace_augmentation_fn=tfb.ffjord.trace_jacobian_hutchinson)
    base = tfd.Independent(tfd.Normal(tf.zeros(case.event_shape), 1.0),
                           reinterpreted_batch_ndims=nd)
    dist = tfd.TransformedDistribution(base, bij)
    self.opt = keras.optimizers.Adam(1e-3)
    self.opt.build(net.trainable_variables)
    opt = self.opt

    def step(x):
      counter.assign(0)
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
      with tf.control_dependencies([loss]):
        nfe_fwd = counter.read_value()
      variables = net.trainable_variables
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))
      with tf.control_dependencies(grads):
        total = counter.read_value()
      return loss, nfe_fwd, total

    def log_prob(x):
      counter.assign(0)
      lp = dist.log_prob(x)
      with tf.control_dependencies([lp]):
        return lp, counter.read_value()

    self.step = tf.function(step)
    self.log_prob = tf.function(log_prob)


IMPLS = {
    "ours": lambda net, case, **kw: Ours(net, case, xla=case.xla, **kw),
    "ours_xla": lambda net, case, **kw: Ours(net, case, xla=True, **kw),
    "ours_noxla": lambda net, case, **kw: Ours(net, case, xla=False, **kw),
    "ours_backprop": lambda net, case, **kw: Ours(
        net, case, xla=False, gradient="backprop", **kw),
    "tfp": lambda net, case, **kw: TFP(net, case, **kw),
}
