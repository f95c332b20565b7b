"""MIL training losses that are not owned by one model (each model's own loss is `model.loss`)."""

from slidemil.mil.losses.mirank import MIRank, mirank_loss

__all__ = ["MIRank", "mirank_loss"]
