"""The `mil` config block: per-model parameter blocks, checked against the models' signatures.

    mil:
      models:
        mean: {}                                  # a registered model, its defaults
        abmil: {hidden: 64}                       # constructor parameters
        dsmil: {mirank: true, lr: 0.0002}         # training keys override the top level
        srmil_plain: {model: srmil, w_gen: 0, mask_rate: 0}   # a second run of a model, by alias
        transmil: {encoders: [resnet18_rand]}     # trained on these encoders' features only
      epochs: 40          # training keys: defaults for every model
      lr: 0.0005
      weight_decay: 0.0001
      device: auto

A block's name is the run's name (the {model} of results/mil/{encoder}/{model}/...); it is a
registered model, or `model:` names one. A block holds that model's constructor parameters
(slidemil.mil.models, `build_mil`) and any training key (TRAIN_DEFAULTS); `encoders:` limits the
run to some encoders (default: every encoder), so a benchmark can run the whole zoo on a few
encoders and a few models on every encoder instead of the full product. It is not a training
parameter: changing it adds or drops jobs and reruns none. `models` may also be a
plain list of names (all defaults). The registry is the only list of models: the config schema
does not repeat it. Snakemake merges nested dicts of a second config file into the first, so a
cohort file that gives `models` as a dict adds to the default's models; a list replaces them.
"""

from __future__ import annotations

import json
from typing import Any

TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 40, "lr": 2e-4, "weight_decay": 1e-4, "mirank": False,
                                  "mirank_k": 10, "mirank_weight": 0.1}
BLOCK_ONLY = ("models", "device")  # keys of the `mil` block that are not training params


def model_blocks(mil: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`mil.models` as {name: block}; a list of names gives empty blocks."""
    models = mil.get("models") or {}
    if isinstance(models, (list, tuple)):
        return {str(m): {} for m in models}
    return {str(m): dict(block or {}) for m, block in models.items()}


def run_params(mil: dict[str, Any], name: str) -> dict[str, Any]:
    """The flat params of run `name` (+ `device`, and `model`: the registered model it trains):
    top-level keys overridden by the run's block."""
    top = {k: v for k, v in mil.items() if k != "models"}
    block = {k: v for k, v in model_blocks(mil).get(name, {}).items() if k != "encoders"}
    return {**top, **block, "model": block.get("model", name)}


def mil_grid(mil: dict[str, Any], encoders: list[str]) -> dict[str, list[str]]:
    """{run: the encoders it is trained on}: the block's `encoders` (in `encoders`' order), else all.

    Raises ValueError naming the run when it lists an encoder the config does not have."""
    grid = {}
    for run, block in model_blocks(mil).items():
        chosen = block.get("encoders")
        if chosen is None:
            grid[run] = list(encoders)
            continue
        if isinstance(chosen, str) or not isinstance(chosen, (list, tuple)):
            raise ValueError(f"config mil.models.{run}.encoders: a list of encoder names, got {chosen!r}")
        unknown = sorted(set(map(str, chosen)) - set(encoders))
        if unknown:
            raise ValueError(f"config mil.models.{run}.encoders: {unknown} are not encoders of this config "
                             f"(encoders and pretrain entries: {list(encoders)})")
        grid[run] = [e for e in encoders if e in set(map(str, chosen))]
    return grid


def check_mil_config(mil: dict[str, Any], n_classes: int = 2) -> dict[str, str]:
    """Check the `mil` block; return {run: its run params as JSON} (the `mil` rule's --params).

    Raises ValueError naming the run and key when a block cannot be built.

    Checks, per model: it is registered; every key of its block is a training key or a parameter
    of its constructor; `mirank: true` only for models with instance logits and binary tasks; and
    the model builds with these parameters (on a tiny input width, so bad values fail here, before
    any job runs).
    """
    from slidemil.mil.models import MIL_MODELS, build_mil, model_params

    blocks = model_blocks(mil)
    if not blocks:
        raise ValueError("config mil.models names no model")
    unknown_top = set(mil) - set(BLOCK_ONLY) - set(TRAIN_DEFAULTS)
    if unknown_top:
        raise ValueError(f"config mil: unknown keys {sorted(unknown_top)}; model parameters belong in "
                         f"the model's block under mil.models; training keys: {sorted(TRAIN_DEFAULTS)}")
    for run, block in blocks.items():
        name = str(block.pop("model", run))
        block.pop("encoders", None)
        if name not in MIL_MODELS:
            raise ValueError(f"config mil.models.{run}: unknown model {name!r}; registered: {sorted(MIL_MODELS)}")
        accepted = model_params(name)
        bad = set(block) - set(accepted) - set(TRAIN_DEFAULTS)
        if bad:
            raise ValueError(f"config mil.models.{run}: unknown keys {sorted(bad)}; model parameters: "
                             f"{sorted(accepted)}; training keys: {sorted(TRAIN_DEFAULTS)}")
        if run_params(mil, run).get("mirank"):
            if not MIL_MODELS[name].has_instance_logits:
                with_logits = sorted(m for m, c in MIL_MODELS.items() if c.has_instance_logits)
                raise ValueError(f"config mil.models.{run}: mirank needs instance logits, which {name} has not "
                                 f"(models with them: {with_logits})")
            if n_classes != 2:
                raise ValueError(f"config mil.models.{run}: mirank needs two classes, got {n_classes}")
        try:
            build_mil(name, 8, n_classes, **{k: v for k, v in block.items() if k in accepted})
        except (TypeError, ValueError) as e:
            raise ValueError(f"config mil.models.{run}: {e}") from e
    return {run: json.dumps(run_params(mil, run), sort_keys=True) for run in blocks}
