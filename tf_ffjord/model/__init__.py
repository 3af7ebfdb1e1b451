"""The Keras model: `FlowModel` and its builders, training objectives, flow matching, train steps, callbacks and the VAE."""

from tf_ffjord.model.builders import FFJORDModel, ImageFlow
from tf_ffjord.model.callbacks import TimeBudget
from tf_ffjord.model.flow_model import FlowModel
from tf_ffjord.model.objectives import FlowMatching, MaximumLikelihood
from tf_ffjord.model.objectives import Objective
from tf_ffjord.model.vae import VAE

__all__ = ["FlowModel", "FFJORDModel", "ImageFlow", "Objective",
           "MaximumLikelihood", "FlowMatching", "TimeBudget", "VAE"]
