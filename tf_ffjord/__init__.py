"""tf-ffjord: FFJORD continuous normalizing flows for TensorFlow and Keras."""

from tf_ffjord import datasets
from tf_ffjord.bijector import FFJORD, Solution
from tf_ffjord.tfp_compat import TFPFFJORD
from tf_ffjord.divergence import Exact, Hutchinson, TraceEstimator
from tf_ffjord.conv import ConvODENet
from tf_ffjord.dynamics import ODENet
from tf_ffjord.end_time import EndTime
from tf_ffjord.images import LogitTransform, Squeeze, bits_per_dim, dequantize
from tf_ffjord.flow_model import FlowModel
from tf_ffjord.models import FFJORDModel, ImageFlow
from tf_ffjord.multiscale import ODENVP
from tf_ffjord.objectives import FlowMatching, MaximumLikelihood
from tf_ffjord.solvers import Solver, Tableau, make_solver

__all__ = [
    "FFJORD", "Solution", "EndTime", "ODENet", "ConvODENet", "FlowModel",
    "FFJORDModel", "ImageFlow", "MaximumLikelihood", "FlowMatching",
    "LogitTransform", "Squeeze", "ODENVP", "dequantize", "bits_per_dim",
    "make_solver", "Solver", "Tableau", "TraceEstimator", "Exact",
    "Hutchinson", "TFPFFJORD", "datasets",
]
__version__ = "0.2.0"
