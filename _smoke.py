import tensorflow as tf, tensorflow_probability as tfp, numpy as np
import tf_ffjord
from tf_ffjord import FFJORD, ODENet, make_solver
f = ODENet(hidden=(8,), dim=2)
b = FFJORD(f, trace="exact")
print(b.solve(tf.ones([3,2])).log_det.numpy(), b.solve(tf.ones([5,2])).nfe.numpy(), len(b._eager_solves))
print(b.solve(tf.zeros([0,2])).state.shape)
bb = FFJORD(f, solver=tfp.math.ode.DormandPrince())
print(bb.solve(tf.ones([3,2])).log_det.numpy())
print(bb.solve(tf.zeros([0,2])).state.shape)
with tf.GradientTape() as t:
  l = tf.reduce_sum(bb.solve(tf.ones([3,2])).log_det)
g = t.gradient(l, f.trainable_variables)
print(bb.nfe_backward.numpy(), g[0].shape)
try: FFJORD(f, rtol=1e-3, noise="gaussian")
except TypeError as e: print(e)
c = b.copy(adjoint="backprop"); print(c.adjoint, c.solver.controller)
