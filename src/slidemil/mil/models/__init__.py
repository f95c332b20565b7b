"""MIL slide classifiers, one per module, registered by name (config: mil.models).

mean, max, abmil (gated attention), clam_sb / clam_mb, dsmil, transmil, srmil. The contract
(forward(bag) -> MilOutput, model.loss) is in `base`.
"""

from slidemil.mil.models.base import (MIL_MODELS, MILModel, MilOutput, build_mil, instance_evidence, model_params,
                                      register_mil)
from slidemil.mil.models import abmil, clam, dsmil, max, mean, srmil, transmil  # noqa: F401,E402  (registration)

__all__ = ["MIL_MODELS", "MILModel", "MilOutput", "build_mil", "instance_evidence", "model_params", "register_mil"]
