"""tf-ffjord: FFJORD continuous normalizing flows for TensorFlow and Keras.

The layers, each a subpackage whose imports only go down:

- `solvers`: ODE solvers (methods, step-size controllers, adjoints);
- `nets`: dynamics networks f(t, z);
- `cnf`: the continuous flow (`FFJORD`, trace estimators, the multiscale
  stack, image transforms, the density of a flow on its base);
- `saving`: SavedModel export and checkpoints;
- `model`: the Keras model, its objectives and train steps;
- `datasets`: data loaders and pipelines.

The names below are the ones most code needs; each subpackage's `__all__`
lists the rest of its public names.
"""

from tf_ffjord import datasets
from tf_ffjord.cnf import EndTime, Exact, FFJORD, Hutchinson, LogitTransform
from tf_ffjord.cnf import ODENVP, Solution, Squeeze, TFPFFJORD, TraceEstimator
from tf_ffjord.cnf.image_transforms import bits_per_dim, dequantize
from tf_ffjord.model import FFJORDModel, FlowMatching, FlowModel, ImageFlow
from tf_ffjord.model import MaximumLikelihood
from tf_ffjord.nets import ConvODENet, ODENet
from tf_ffjord.solvers import Solver, Tableau, make_solver

__all__ = [
    "FFJORD", "Solution", "EndTime", "ODENet", "ConvODENet", "FlowModel",
    "FFJORDModel", "ImageFlow", "MaximumLikelihood", "FlowMatching",
    "LogitTransform", "Squeeze", "ODENVP", "dequantize", "bits_per_dim",
    "make_solver", "Solver", "Tableau", "TraceEstimator", "Exact",
    "Hutchinson", "TFPFFJORD", "datasets",
]
__version__ = "0.2.0"
