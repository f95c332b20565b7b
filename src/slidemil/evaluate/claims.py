"""The claims table: does each seed paper's claim hold on this cohort?

One function per claim, registered with @claim. A claim function reads only the benchmark's
metadata (the config's encoder entries, the benchmarked (encoder, model) methods, the baselines)
and returns the paired comparisons that test it, each "A beats B"; claims_table runs them (AUC
difference on the common test slides, paired stratified bootstrap 95% CI and p-value:
slidemil.evaluate.benchmark.compare) and gives each a verdict:

* holds: the CI's lower bound is above 0 (A's AUC is higher);
* does not hold: the CI's upper bound is below `margin` (config evaluate.claim_margin, AUC
  points): the data rule out a gain as large as the margin (B better, or A better by less than
  the smallest gain worth claiming). With margin 0 this is "B significantly better";
* inconclusive: neither, i.e. the CI contains 0 and reaches the margin: more slides needed;
* not run: the methods are not in this benchmark (the note says what is missing).

A claim tested by several comparisons (e.g. one per SSL objective) gets one row each, with no
multiplicity correction: read it as "holds in k of n comparisons".

Encoder metadata comes from the config's `encoders` entries (frozen encoders) and `pretrain`
entries (name: params; each becomes an encoder of the benchmark, its `backbone` read as `arch`
and the defaults of slidemil.config.PretrainParams filled in: encoder_metadata). Conventions
the claims expect (all optional; an entry without them takes part in no claim):

* objective: the pretraining loss as registered in slidemil.ssl.losses: weaksupcon, or an SSL
  objective (any registered objective that uses no labels: ssl_objectives); absent for random or
  ImageNet encoders;
* sampler: augment | spatial | mixed (slidemil.ssl.samplers), the positive-pair sampler (absent:
  augment); the spatial-pairs claim compares spatial with augment (mixed takes part in none);
* hnm_round: int, the hard-negative-mining round (0 = the encoder the loop starts from), and
  hnm_base: the name of that round-0 encoder (may be omitted when exactly one encoder has
  hnm_round 0);
* arch: encoders are only compared with encoders of the same arch (the claims are about the
  objective, not the backbone); WeakSupCon is compared with SSL encoders of the same sampler too.

MIL runs (config `mil.models`, name: {parameters}; `model:` names the registered model, default
the run's name): a run of model srmil with `w_gen: 0` (the reconstruction weight) is the
no-regularisation ablation; w_gen absent means the model's default (1.8, > 0). E.g.
`srmil: {}` vs `srmil_plain: {model: srmil, w_gen: 0, mask_rate: 0}`. Encoder claims are compared
under the baseline MIL model (evaluate.baseline_model); model claims on the baseline encoder
(evaluate.baseline_encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from slidemil.config import PretrainParams
from slidemil.plan import registered

Method = tuple[str, str]  # (encoder, model)
PRETRAIN_KEYS = ("objective", "sampler", "backbone")  # the pretrain entry's keys the claims read
CLAIM_COLUMNS = ["claim", "paper", "statement", "comparison", "a_encoder", "a_model", "b_encoder", "b_model",
                 "n_slides", "auc_a", "auc_b", "auc_diff", "diff_ci_lo", "diff_ci_hi", "p_value", "verdict",
                 "note"]


@dataclass
class ClaimContext:
    """What a claim may look at. compare(a, b) -> a comparisons.csv row (dict) for a vs b."""

    encoders: list[dict[str, Any]]
    methods: set[Method]
    baseline_encoder: str
    baseline_model: str
    margin: float = 0.02
    compare: Callable[[Method, Method], dict[str, Any]] | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # config mil.models, normalised

    def model_runs(self, registered: str) -> dict[str, dict[str, Any]]:
        """MIL runs (name -> parameters) of the registered model `registered`."""
        return {name: p for name, p in self.models.items() if p.get("model", name) == registered}

    def encoders_where(self, **meta: Any) -> list[dict[str, Any]]:
        """Config encoder entries whose metadata equal `meta` (value None matches an absent key)."""
        return [e for e in self.encoders if all(e.get(k) == v for k, v in meta.items())]


@dataclass
class Test:
    """One comparison that tests a claim: a beats b."""

    a: Method
    b: Method


@dataclass
class Plan:
    """What a claim function returns: its comparisons, or none and a note saying what is missing."""

    tests: list[Test] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    statement: str
    fn: Callable[[ClaimContext], Plan]


CLAIMS: dict[str, Claim] = {}


def claim(name: str, paper: str, statement: str) -> Callable[[Callable[[ClaimContext], Plan]], Callable]:
    """Register a claim function under `name` (row order in claims.csv = registration order)."""
    def register(fn: Callable[[ClaimContext], Plan]) -> Callable[[ClaimContext], Plan]:
        if name in CLAIMS:
            raise ValueError(f"claim {name!r} registered twice")
        CLAIMS[name] = Claim(name, paper, statement, fn)
        return fn
    return register


def verdict(ci_lo: float, ci_hi: float, margin: float) -> str:
    """holds / does not hold / inconclusive from the CI of AUC(A) - AUC(B) (module docstring)."""
    if not (math.isfinite(ci_lo) and math.isfinite(ci_hi)):
        return "inconclusive"
    if ci_lo > 0:
        return "holds"
    if ci_hi < margin:
        return "does not hold"
    return "inconclusive"


def _same_arch(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("arch") == b.get("arch")


def _sampler(e: dict[str, Any]) -> str:
    return e.get("sampler") or PretrainParams.sampler  # frozen encoders: as if augmentation pairs


def ssl_objectives() -> list[str]:
    """Registered objectives that use no labels (self-supervised)."""
    return [name for name, o in registered.objectives().items() if not o.attrs["uses_labels"]]


@claim("floor_abmil_beats_mean", "slidemil floor/ceiling",
       "gated ABMIL beats mean pooling on the baseline encoder's features")
def abmil_beats_mean(ctx: ClaimContext) -> Plan:
    return Plan([Test((ctx.baseline_encoder, "abmil"), (ctx.baseline_encoder, "mean"))])


@claim("weaksupcon_beats_ssl", "000 WeakSupCon (arXiv 2602.09477)",
       "WeakSupCon features beat SSL features for MIL")
def weaksupcon_beats_ssl(ctx: ClaimContext) -> Plan:
    wsc = ctx.encoders_where(objective="weaksupcon")
    ssl_names = ssl_objectives()
    ssl = [e for e in ctx.encoders if e.get("objective") in ssl_names and not e.get("hnm_round")]
    # Only the objective differs: same backbone, same pair sampler.
    tests = [Test((a["name"], ctx.baseline_model), (b["name"], ctx.baseline_model))
             for a in wsc for b in ssl if _same_arch(a, b) and _sampler(a) == _sampler(b)]
    return Plan(tests, "" if tests else "needs encoders with objective: weaksupcon and an SSL objective "
                f"({', '.join(ssl_names)}) of the same arch and sampler")


@claim("spatial_pairs_beat_augment", "001 spatial-context positive pairs",
       "spatial-context pairs beat augmentation-only pairs, for each SSL objective")
def spatial_beats_augment(ctx: ClaimContext) -> Plan:
    tests = []
    ssl_names = ssl_objectives()
    for objective in dict.fromkeys(e.get("objective") for e in ctx.encoders if e.get("objective") in ssl_names):
        encs = [e for e in ctx.encoders_where(objective=objective) if not e.get("hnm_round")]
        spatial = [e for e in encs if _sampler(e) == "spatial"]
        augment = [e for e in encs if _sampler(e) == "augment"]
        tests += [Test((a["name"], ctx.baseline_model), (b["name"], ctx.baseline_model))
                  for a in spatial for b in augment if _same_arch(a, b)]
    return Plan(tests, "" if tests else "needs, for an SSL objective, encoders with sampler: spatial and "
                "sampler: augment of the same arch")


@claim("hnm_rounds_beat_round0", "002 hard-negative mining + MIRank",
       "hard-negative-mining rounds beat round 0")
def hnm_beats_round0(ctx: ClaimContext) -> Plan:
    by_name = {e["name"]: e for e in ctx.encoders}
    round0 = [e for e in ctx.encoders if e.get("hnm_round") == 0]
    tests, problems = [], []
    for e in ctx.encoders:
        if not isinstance(e.get("hnm_round"), int) or e["hnm_round"] <= 0:
            continue
        base = e.get("hnm_base") or (round0[0]["name"] if len(round0) == 1 else None)
        if base not in by_name:
            problems.append(f"{e['name']}: hnm_base {base!r} is not an encoder")
            continue
        tests.append(Test((e["name"], ctx.baseline_model), (base, ctx.baseline_model)))
    note = "; ".join(problems) or ("" if tests else "needs encoders with hnm_round >= 1 and their round-0 "
                                   "encoder (hnm_round: 0, or hnm_base)")
    return Plan(tests, note)


@claim("spatial_regularisation_beats_none", "003 SRMIL (WACV 2026)",
       "spatial regularisation (reconstruction weight > 0) beats weight 0")
def srmil_beats_plain(ctx: ClaimContext) -> Plan:
    runs = ctx.model_runs("srmil")
    default = registered.mil_models()["srmil"].params["w_gen"]
    w_gen = {name: float(p.get("w_gen", default)) for name, p in runs.items()}  # type: ignore[arg-type]
    tests = [Test((ctx.baseline_encoder, a), (ctx.baseline_encoder, b))
             for a in sorted(runs) for b in sorted(runs) if w_gen[a] > 0 and w_gen[b] == 0]
    return Plan(tests, "" if tests else "needs MIL runs of model srmil with w_gen > 0 and w_gen: 0 "
                "(e.g. srmil: {} and srmil_plain: {model: srmil, w_gen: 0})")


def encoder_metadata(encoders: list[dict[str, Any]] | None, pretrain: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Config `encoders` entries, then one entry per `pretrain` entry: {name, arch (= backbone),
    objective, sampler, ...its other keys (e.g. hnm_round, hnm_base)}, defaults filled in."""
    out = [dict(e) for e in encoders or []]
    for name, params in (pretrain or {}).items():
        defaults = PretrainParams()
        entry = {**{k: getattr(defaults, k) for k in PRETRAIN_KEYS}, **(params or {}), "name": str(name)}
        entry["arch"] = entry.pop("backbone")
        out.append(entry)
    return out


def normalise_models(models: dict[str, Any] | list[str] | None) -> dict[str, dict[str, Any]]:
    """Config mil.models (a list of names, or name -> parameters or null) -> name -> parameters."""
    if not models:
        return {}
    if isinstance(models, dict):
        return {str(k): dict(v or {}) for k, v in models.items()}
    return {str(m): {} for m in models}


def _row(c: Claim, test: Test | None, note: str) -> dict[str, Any]:
    row: dict[str, Any] = {"claim": c.name, "paper": c.paper, "statement": c.statement, "note": note}
    if test is not None:
        row.update({"comparison": f"{'/'.join(test.a)} vs {'/'.join(test.b)}", "a_encoder": test.a[0],
                    "a_model": test.a[1], "b_encoder": test.b[0], "b_model": test.b[1]})
    return row


def claims_table(ctx: ClaimContext, names: list[str] | None = None) -> pd.DataFrame:
    """One row per (claim, comparison); a claim without comparisons gets one 'not run' row."""
    rows = []
    for name in names or list(CLAIMS):
        c = CLAIMS[name]
        plan = c.fn(ctx)
        if not plan.tests:
            rows.append({**_row(c, None, plan.note), "verdict": "not run"})
            continue
        for test in plan.tests:
            missing = [m for m in (test.a, test.b) if m not in ctx.methods]
            if missing:
                note = "no predictions for " + ", ".join("/".join(m) for m in missing)
                rows.append({**_row(c, test, note), "verdict": "not run"})
                continue
            r = ctx.compare(test.a, test.b)
            stats = {k: r[k] for k in ("n_slides", "auc_a", "auc_b", "auc_diff", "diff_ci_lo", "diff_ci_hi",
                                       "p_value")}
            v = verdict(r["diff_ci_lo"], r["diff_ci_hi"], ctx.margin)
            note = plan.note or ("" if v != "inconclusive" or math.isfinite(r["diff_ci_lo"])
                                 else "CI undefined (one class among the common test slides)")
            rows.append({**_row(c, test, note), **stats, "verdict": v})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
