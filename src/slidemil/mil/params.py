"""The `mil` config block's runs, checked against the registry without importing torch.

    mil:
      models:
        mean: {}                                  # a registered model, its defaults
        abmil: {hidden: 64}                       # constructor parameters
        dsmil: {mirank: true, lr: 0.0002}         # training keys override the top level
        srmil_plain: {model: srmil, w_gen: 0, mask_rate: 0}   # a second run of a model, by alias
        transmil: {encoders: [resnet18_rand]}     # trained on these encoders' features only
      epochs: 40          # training keys (slidemil.config.MilTrain): defaults for every run
      lr: 0.0005
      device: auto

A block's name is the run's name (the {model} of results/mil/{encoder}/{model}/...); it is a
registered model, or `model:` names one. A block holds that model's constructor parameters
(slidemil.mil.models, `build_mil`) and any training key; `encoders:` limits the run to some
encoders (default: every encoder), so a benchmark can run the whole zoo on a few encoders and a
few models on every encoder instead of the full product. It is not a training parameter: changing
it adds or drops jobs and reruns none. `models` may also be a plain list of names (all defaults).
The registry is the only list of models: planning reads it through slidemil.plan.registered, and
the job checks the values only building the model can check (`check_model_values`). Snakemake
merges nested dicts of a second config file into the first, so a cohort file that gives `models`
as a dict adds to the default's models; a list replaces them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from slidemil.config import MilConfig, MilTrain, from_block

TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(MilTrain))
BUILD_ARGS = ("in_dim", "n_classes")  # constructor arguments the job gives, never the config
RUN_ONLY = ("model", "encoders")  # keys of a run's block that are neither training keys nor model parameters


@dataclass(frozen=True)
class MilRun:
    """One run of `mil.models`: the registered model it trains, its training keys and constructor parameters."""

    name: str
    model: str
    train: MilTrain
    model_params: dict
    device: str

    def params(self) -> dict[str, Any]:
        """The mil job's --params (slidemil.mil.job): flat, as slidemil.mil.loop.split_params reads them."""
        return {**dataclasses.asdict(self.train), **self.model_params, "device": self.device, "model": self.model}


def model_blocks(mil: dict[str, Any] | MilConfig) -> dict[str, dict[str, Any]]:
    """`mil.models` as {name: block}; a list of names gives empty blocks."""
    models = (mil.models if isinstance(mil, MilConfig) else mil.get("models")) or {}
    if isinstance(models, (list, tuple)):
        return {str(m): {} for m in models}
    return {str(m): dict(block or {}) for m, block in models.items()}


def mil_run(mil: MilConfig, name: str) -> MilRun:
    """Run `name`: the block's training keys over the top level's, the rest constructor parameters."""
    block = model_blocks(mil)[name]
    train = dataclasses.replace(MilTrain(**{k: getattr(mil, k) for k in TRAIN_KEYS}),
                                **{k: v for k, v in block.items() if k in TRAIN_KEYS})
    params = {k: v for k, v in block.items() if k not in TRAIN_KEYS and k not in RUN_ONLY}
    return MilRun(name, str(block.get("model", name)), train, params, mil.device)


def run_params(mil: dict[str, Any], name: str) -> dict[str, Any]:
    """The flat params of run `name` of a `mil` block given as a dict (strictly loaded)."""
    return mil_run(from_block(MilConfig, mil, "mil"), name).params()


def mil_runs(mil: MilConfig, n_classes: int) -> dict[str, MilRun]:
    """Every run, checked against the registry as the source declares it (no torch): the model is
    registered, every key of its block is a training key or a constructor parameter, and `mirank`
    is asked only of models with instance logits on two classes.

    Raises ValueError naming config key mil.models.<run>."""
    from slidemil.plan.registered import mil_models

    registered = mil_models()
    blocks = model_blocks(mil)
    if not blocks:
        raise ValueError("config mil.models names no model")
    runs = {}
    for name in blocks:
        run = mil_run(mil, name)
        if run.model not in registered:
            raise ValueError(f"config mil.models.{name}: unknown model {run.model!r}; registered: {sorted(registered)}")
        accepted = sorted(set(registered[run.model].params) - set(BUILD_ARGS))
        bad = set(run.model_params) - set(accepted)
        if bad:
            raise ValueError(f"config mil.models.{name}: unknown keys {sorted(bad)}; model parameters: "
                             f"{accepted}; training keys: {sorted(TRAIN_KEYS)}")
        if run.train.mirank:
            if not registered[run.model].attrs.get("has_instance_logits"):
                with_logits = sorted(m for m, r in registered.items() if r.attrs.get("has_instance_logits"))
                raise ValueError(f"config mil.models.{name}: mirank needs instance logits, which {run.model} has "
                                 f"not (models with them: {with_logits})")
            if n_classes != 2:
                raise ValueError(f"config mil.models.{name}: mirank needs two classes, got {n_classes}")
        runs[name] = run
    return runs


def check_model_values(run: str, model: str, model_params: dict[str, Any], n_classes: int) -> None:
    """Build the model on a tiny input width: a value only its constructor can judge (a hidden size
    that is not a multiple of the heads) fails here, naming the config key, before any training."""
    from slidemil.mil.models import build_mil

    try:
        build_mil(model, 8, n_classes, **model_params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config mil.models.{run}: {e}") from e


def mil_grid(mil: dict[str, Any] | MilConfig, encoders: list[str]) -> dict[str, list[str]]:
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
