"""MIL slide classifiers (registry in `models`), their losses, bags and the training loop (`train`)."""

from slidemil.mil.models import MIL_MODELS, build_mil, register_mil

__all__ = ["MIL_MODELS", "build_mil", "register_mil"]
