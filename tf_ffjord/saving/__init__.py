"""Saving: SavedModel export for serving without tf_ffjord, and resumable training checkpoints."""

from tf_ffjord.saving.checkpoint_files import CheckpointError
from tf_ffjord.saving.checkpoints import Checkpoint
from tf_ffjord.saving.export import SIGNATURES, export_model

__all__ = ["export_model", "SIGNATURES", "Checkpoint", "CheckpointError"]
