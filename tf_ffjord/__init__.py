"""tf-ffjord: FFJORD continuous normalizing flows for TensorFlow and Keras."""

from tf_ffjord import datasets
from tf_ffjord.bijector import FFJORD, Solution
from tf_ffjord.conv import ConvODENet
from tf_ffjord.dynamics import ODENet
from tf_ffjord.images import LogitTransform, ODENVP, Squeeze, bits_per_dim
from tf_ffjord.images import dequantize
from tf_ffjord.model import FFJORDModel
from tf_ffjord.multiscale import MultiscaleFFJORDModel
from tf_ffjord.solvers import make_solver

__all__ = [
    "FFJORD", "Solution", "ODENet", "ConvODENet", "FFJORDModel",
    "MultiscaleFFJORDModel", "LogitTransform", "Squeeze", "ODENVP",
    "dequantize", "bits_per_dim", "make_solver", "datasets",
]
__version__ = "0.1.0"
