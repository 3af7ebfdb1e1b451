"""Dynamics networks f(t, z[, context]): dense (`ODENet`), convolutional, U-Net, and the MADE of IAF posteriors."""

from tf_ffjord.nets.conv import ConvODENet
from tf_ffjord.nets.dense import DynamicsNet, ODENet, TimeConditionedNet
from tf_ffjord.nets.made import MADE
from tf_ffjord.nets.unet import UNetODENet

__all__ = ["ODENet", "ConvODENet", "UNetODENet", "MADE", "DynamicsNet",
           "TimeConditionedNet"]
