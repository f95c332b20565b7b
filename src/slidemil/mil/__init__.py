"""MIL slide classifiers (registry in `models`) and their training loop (`train`)."""

from slidemil.mil.models import MIL_MODELS, build_mil, register_mil

__all__ = ["MIL_MODELS", "build_mil", "register_mil"]
