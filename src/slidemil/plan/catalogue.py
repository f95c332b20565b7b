"""What the workflow plans, built once from the validated config (no torch: planning reads the
registries through slidemil.plan.registered).

Encoders of the benchmark: the frozen `encoders` entries; label-free `pretrain` entries, trained once
on every slide (scope `all`) and then embedded like a frozen one; label-using ones (and `scope:
folds`), trained per fold on the fold's training slides (scopes fold{k}), with per-fold features;
and the rounds of each `hnm` run, R-r{t}, fold-trained encoders too. Then the MIL grid (run -> the
encoders it is trained on) and each run's typed params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from slidemil.config import Config, EncoderSpec, HNMParams, PretrainParams, load_config
from slidemil.mil.params import MilRun, mil_grid, mil_runs
from slidemil.plan import registered


def encoder_weights(name: str, scope: str) -> str:
    """Where a trained encoder's weights are written (rules pretrain and hnm_finetune)."""
    return f"results/encoders/{name}/{scope}/encoder.pt"


def round_encoder(run: str, t: int) -> str:
    """The benchmark's name of run `run`'s round-t encoder."""
    return f"{run}-r{t}"


def scopes_of(params: PretrainParams, n_folds: int, uses_labels: bool) -> list[str]:
    """Scopes an entry is trained in: `all`, or `fold0..fold{n-1}` (always when its objective uses labels)."""
    if uses_labels and params.scope == "all":
        raise ValueError(f"objective {params.objective} uses slide labels: it must be trained per fold "
                         "(scope folds), never on the whole cohort")
    if uses_labels or params.scope == "folds":
        return [f"fold{k}" for k in range(n_folds)]
    return ["all"]


def pretrained_encoder(name: str, params: PretrainParams, scope: str) -> EncoderSpec:
    """The `encoders` entry of a pretrained encoder: its backbone, fed as in pretraining."""
    return EncoderSpec(name, arch=params.backbone, depth=params.depth, input_size=params.input_size,
                       weights=encoder_weights(name, scope))


def hnm_runs(runs: dict[str, HNMParams], encoders: list[str]) -> dict[str, HNMParams]:
    """The enabled runs, checked: the base is an encoder, no round's name is taken."""
    enabled = {name: p for name, p in runs.items() if p.enabled}
    for name, p in enabled.items():
        if p.base not in encoders:
            raise ValueError(f"config hnm.{name}: base {p.base!r} is not an encoder of the benchmark; "
                             f"choose one of {sorted(encoders)}")
        taken = set(encoders) & {round_encoder(name, t) for t in range(1, p.rounds + 1)}
        if taken:
            raise ValueError(f"config hnm.{name}: round encoder names {sorted(taken)} are already encoders; rename the run")
    return enabled


def round_encoders(runs: dict[str, HNMParams]) -> dict[str, tuple[str, int]]:
    """Every round-t >= 1 encoder name -> (run, t)."""
    return {round_encoder(n, t): (n, t) for n, p in runs.items() for t in range(1, p.rounds + 1)}


@dataclass(frozen=True)
class Catalogue:
    config: Config
    n_folds: int
    seeds: list[int]
    encoders: dict[str, EncoderSpec]  # embedded once: frozen entries and pretrained ones of scope `all`
    pretrain: dict[str, PretrainParams]  # enabled entries
    pretrain_scopes: dict[str, list[str]]
    fold_encoders: list[str]  # trained per fold: pretrained per fold, then mining rounds
    hnm: dict[str, HNMParams]  # enabled runs
    hnm_rounds: dict[str, tuple[str, int]]  # round encoder -> (run, round)
    mil_grid: dict[str, list[str]]  # MIL run -> the encoders it is trained on
    mil_runs: dict[str, MilRun]

    @property
    def all_encoders(self) -> list[str]:
        return [*self.encoders, *self.fold_encoders]

    def needs_graphs(self, pretrain: str) -> bool:
        """Whether an entry's pair sampler reads the neighbour graphs."""
        return bool(registered.samplers()[self.pretrain[pretrain].sampler].attrs.get("needs_graph"))

    def hnm_base(self, run: str, fold: int | str) -> EncoderSpec:
        """A run's round-0 encoder in fold `fold`."""
        base = self.hnm[run].base
        return self.encoders[base] if base in self.encoders else pretrained_encoder(base, self.pretrain[base], f"fold{fold}")

    def fold_encoder(self, name: str, fold: int | str) -> EncoderSpec:
        """The entry of a fold-trained encoder: a mining round (its base's backbone, the round's weights),
        or a pretrained one."""
        if name in self.hnm_rounds:
            return dataclasses.replace(self.hnm_base(self.hnm_rounds[name][0], fold), name=name,
                                       weights=encoder_weights(name, f"fold{fold}"))
        return pretrained_encoder(name, self.pretrain[name], f"fold{fold}")

    def hnm_metadata(self) -> list[dict[str, Any]]:
        """Claims metadata (slidemil.evaluate.claims) of every round encoder: hnm_round t and its hnm_base."""
        return [{"name": enc, "arch": self.hnm_base(run, 0).arch, "objective": "supcon_hnm_steps", "hnm_round": t,
                 "hnm_base": self.hnm[run].base} for enc, (run, t) in self.hnm_rounds.items()]


def build_catalogue(config: dict[str, Any]) -> Catalogue:
    """The catalogue of a config that passed the schema; raises ValueError naming the bad config key."""
    cfg = load_config(config)
    n_folds = cfg.evaluate.folds
    objectives, samplers = registered.objectives(), registered.samplers()
    pretrain = {n: p for n, p in cfg.pretrain.items() if p.enabled}
    for name, p in pretrain.items():
        if p.objective not in objectives:
            raise ValueError(f"config pretrain.{name}.objective: unknown {p.objective!r}; registered: {sorted(objectives)}")
        if p.sampler not in samplers:
            raise ValueError(f"config pretrain.{name}.sampler: unknown {p.sampler!r}; registered: {sorted(samplers)}")
    scopes = {n: scopes_of(p, n_folds, bool(objectives[p.objective].attrs.get("uses_labels"))) for n, p in pretrain.items()}
    encoders = {e.name: e for e in cfg.encoders}
    if set(pretrain) & set(encoders):
        raise ValueError(f"config: {sorted(set(pretrain) & set(encoders))} named in both `encoders` and `pretrain`")
    encoders.update({n: pretrained_encoder(n, pretrain[n], "all") for n, s in scopes.items() if s == ["all"]})
    fold_encoders = [n for n, s in scopes.items() if s != ["all"]]
    hnm = hnm_runs(cfg.hnm, [*encoders, *fold_encoders])
    rounds = round_encoders(hnm)
    fold_encoders += list(rounds)
    return Catalogue(cfg, n_folds, list(cfg.seeds), encoders, pretrain, scopes, fold_encoders, hnm, rounds,
                     mil_grid(cfg.mil, [*encoders, *fold_encoders]), mil_runs(cfg.mil, len(cfg.classes)))
