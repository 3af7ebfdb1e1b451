"""The continuous flow: the `FFJORD` bijector, its augmented ODE, trace estimators, regularizers, end time, image transforms, the multiscale stack and composite flows."""

from tf_ffjord.cnf.contract import CONTRACT, DynamicsError
from tf_ffjord.cnf.end_time import EndTime
from tf_ffjord.cnf.ffjord import FFJORD, Solution
from tf_ffjord.cnf.image_transforms import LogitTransform, Squeeze
from tf_ffjord.cnf.multiscale import ODENVP
from tf_ffjord.cnf.tfp_port import AugmentationTrace, TFPFFJORD
from tf_ffjord.cnf.trace_estimators import Exact, Hutchinson, TraceEstimator

__all__ = ["FFJORD", "Solution", "TFPFFJORD", "AugmentationTrace", "EndTime",
           "ODENVP", "LogitTransform", "Squeeze", "TraceEstimator", "Exact",
           "Hutchinson", "CONTRACT", "DynamicsError"]
