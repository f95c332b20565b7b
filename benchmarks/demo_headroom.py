"""Headroom of the demo cohort: how far a random-feature floor sits below a trained ceiling.

Measured on a finished demo run (its tile stores, features, annotations and folds.csv), never on
results/mil, so it runs whatever MIL layout the workflow writes:

1. floor, tile level: a logistic-regression probe on the demo encoder's frozen random features,
   fitted on the training slides' tiles of each fold, scored on its test slides' tiles;
2. ceiling, tile level: the same architecture trained supervised on the training slides' tile
   labels (per fold; a balanced sample of tiles per epoch, flips and 90-degree turns), scored
   with its own head on the test tiles;
   both tile AUCs are the mean over folds of each fold's test-tile AUC (each fold has its own
   model; the AUC of all folds' scores pooled is reported beside it as `*_pooled_all`);
3. slide level: gated ABMIL and mean pooling (slidemil.mil.loop.train_mil, model selection on
   the validation slides only) on both feature sets, test predictions pooled over folds and seeds.

Tile labels: a tile is tumour when its centre lies in the demo's tumour GeoJSON
(slidemil.cohorts.annotations.tile_labels); mimic tiles (centre in the mimic GeoJSON) are reported apart.
Nothing is selected on test slides. Prints one line per figure and, last, one JSON object.

    .venv/bin/python benchmarks/demo_headroom.py                       # results/, config/config.yaml
    .venv/bin/python benchmarks/demo_headroom.py --results /tmp/h1/results --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("TQDM_DISABLE", "1")

# The bounds of issue 8: the demo leaves room between floor and ceiling.
BOUNDS = {
    "random_probe_tile_auc": ("<=", 0.85),
    "supervised_tile_auc": (">=", 0.95),
    "abmil_random_slide_auc": ("<=", 0.85),
    "abmil_supervised_slide_auc": (">=", 0.95),
}


@dataclass
class Slide:
    """One slide of the run: its tiles' features and labels (N tiles)."""

    slide_id: str
    label: int  # slide class index (0 = negative)
    tiles_path: Path
    features: np.ndarray  # float32 [N, D], the demo encoder's (random) features
    tumour: np.ndarray  # int [N], 1 = tile centre in a tumour polygon
    mimic: np.ndarray  # int [N], 1 = tile centre in a mimic polygon


def load_run(results: Path, encoder: str, samples: Path, classes: list[str]) -> tuple[dict[str, Slide], "pd.DataFrame"]:
    """Slides that are in folds.csv (QC-passed), with features and tile labels, and the fold table."""
    import pandas as pd
    import zarr

    from slidemil.cohorts.annotations import tile_labels
    from slidemil.cohorts.sheet import read_sheet
    from slidemil.slides.store import read_features

    folds = pd.read_csv(results / "folds.csv")
    sheet = read_sheet(samples).set_index("slide_id")
    slides = {}
    for sid in sorted(folds["slide_id"].unique()):
        feats = read_features(results / "features" / encoder / f"{sid}.zarr")
        attrs = dict(zarr.open_group(str(results / "tiles" / f"{sid}.zarr"), mode="r").attrs)
        ts0 = float(attrs["tile_size_level0"])
        ann = results / "demo" / "annotations" / f"{sid}.geojson"
        mim = results / "demo" / "annotations" / f"{sid}.mimic.geojson"
        n = len(feats.coords)
        tumour = tile_labels(feats.coords, ts0, ann) if n else np.zeros(0, int)
        mimic = tile_labels(feats.coords, ts0, mim) if n and mim.exists() else np.zeros(n, int)
        label = int(sheet.loc[sid, "label"] != classes[0])
        slides[sid] = Slide(sid, label, results / "tiles" / f"{sid}.zarr", feats.features, tumour, mimic & (1 - tumour))
    return slides, folds


def roles_of(folds, fold: int) -> dict[str, str]:
    f = folds[folds["fold"] == fold]
    return dict(zip(f["slide_id"], f["role"]))


def tile_aucs(y: np.ndarray, mimic: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Tile AUC over all tiles, tumour vs mimic tiles only, tumour vs other (non-mimic) benign tiles."""
    from slidemil.evaluate.metrics import auc_binary

    out = {"all": auc_binary(y, score)}
    m = (y == 1) | (mimic == 1)
    out["vs_mimic"] = auc_binary(y[m], score[m]) if mimic.any() else float("nan")
    n = mimic == 0
    out["vs_other"] = auc_binary(y[n], score[n])
    return out


def fold_tile_aucs(per_fold: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Tile AUCs of each fold's test tiles [(y, mimic, score)], averaged over folds, and of all folds pooled.

    The headline is the mean of per-fold AUCs: each fold has its own model, and pooling their
    uncalibrated scores also measures how alike the folds' score scales are (a supervised net's
    logit margins differ between folds by several units), which is not what a tile AUC asks.
    """
    folds = [tile_aucs(*f) for f in per_fold]
    out = {k: float(np.nanmean([f[k] for f in folds])) for k in folds[0]}  # a fold without mimics: NaN vs_mimic
    out["fold_sd"] = float(np.std([f["all"] for f in folds]))
    out["per_fold"] = [f["all"] for f in folds]
    pooled = tile_aucs(*(np.concatenate(parts) for parts in zip(*per_fold)))
    out.update({f"pooled_{k}": v for k, v in pooled.items()})
    return out


def random_probe(slides: dict[str, Slide], folds, seed: int) -> dict[str, float]:
    """The workflow's linear probe (slidemil.evaluate.probe): fit on each fold's training tiles, score its test tiles."""
    from slidemil.evaluate.probe import probe_scores

    per_fold = []
    usable = {s: sl for s, sl in slides.items() if len(sl.tumour)}
    for k in sorted(folds["fold"].unique()):
        scores = probe_scores(usable, roles_of(folds, k), seed)
        per_fold.append(tuple(np.concatenate(v) for v in (
            [slides[s].tumour for s in scores], [slides[s].mimic for s in scores], list(scores.values()))))
    return fold_tile_aucs(per_fold)


def read_tiles(slide: Slide) -> np.ndarray:
    """All tiles of a slide, uint8 [N, T, T, 3]."""
    from slidemil.slides.store import open_tiles

    g = open_tiles(slide.tiles_path)
    return np.asarray(g["tiles"][:]) if g["tiles"].shape[0] else np.zeros((0, 1, 1, 3), np.uint8)


def input_size_of(spec) -> int:
    """The encoder's input size (newer EncoderSpecs resolve a None from the registry entry)."""
    return spec.resolved_input_size() if hasattr(spec, "resolved_input_size") else spec.input_size


def train_supervised(tiles: np.ndarray, y: np.ndarray, spec, seed: int, epochs: int, neg_ratio: float,
                     batch: int = 64, lr: float = 1e-3):
    """Train encoder + linear head on tiles [N,T,T,3] with labels y [N]; returns (encoder, head), eval mode.

    Each epoch sees every tumour tile and `neg_ratio` times as many random benign tiles, with
    random flips and 90-degree turns (tumour is a minority; orientation carries no label); the
    learning rate decays along a cosine to 0.
    """
    import torch
    from torch import nn

    from slidemil.encoders.embed import build_encoder, preprocess

    size = input_size_of(spec)
    enc = build_encoder(spec, seed).train().requires_grad_(True)
    with torch.no_grad():
        dim = enc(preprocess(tiles[:2], size)).shape[1]
    torch.manual_seed(seed)
    head = nn.Linear(dim, 2)
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    n_neg = min(len(neg), int(neg_ratio * max(len(pos), 1)))
    # cosine decay to 0: the last steps settle, so folds end on comparable models rather than mid-jump
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-(len(pos) + n_neg) // batch))
    for _ in range(epochs):
        order = rng.permutation(np.concatenate([pos, rng.choice(neg, n_neg, replace=False)]))
        for a in range(0, len(order), batch):
            b = order[a : a + batch]
            x = tiles[b]
            if rng.random() < 0.5:
                x = x[:, ::-1]
            x = np.rot90(x, int(rng.integers(4)), axes=(1, 2))
            loss = nn.functional.cross_entropy(head(enc(preprocess(x, size))), torch.from_numpy(y[b]).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return enc.eval().requires_grad_(False), head.eval().requires_grad_(False)


def embed(enc, head, tiles: np.ndarray, input_size: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D], tumour logit margin [N]) of a trained encoder and head."""
    import torch

    from slidemil.encoders.embed import preprocess

    feats, scores = [], []
    with torch.inference_mode():
        for a in range(0, len(tiles), batch):
            f = enc(preprocess(tiles[a : a + batch], input_size))
            logits = head(f)
            feats.append(f.numpy())
            scores.append((logits[:, 1] - logits[:, 0]).numpy())
    return np.concatenate(feats), np.concatenate(scores)


def supervised(slides: dict[str, Slide], folds, spec, seed: int, epochs: int, neg_ratio: float,
               max_train_tiles: int) -> tuple[dict[str, float], dict[int, dict[str, np.ndarray]]]:
    """Per fold: train on the training slides' tiles, embed every slide, score the test tiles.

    Returns the test tile AUCs (fold_tile_aucs) and, per fold, slide_id -> features of that fold's encoder.
    """
    tiles = {s: read_tiles(sl) for s, sl in slides.items() if len(sl.tumour)}
    per_fold, feats = [], {}
    rng = np.random.default_rng(seed)
    for k in sorted(folds["fold"].unique()):
        t0 = time.time()
        roles = roles_of(folds, k)
        train = [s for s, r in roles.items() if r == "train" and s in tiles]
        x = np.concatenate([tiles[s] for s in train])
        y = np.concatenate([slides[s].tumour for s in train])
        if len(x) > max_train_tiles:  # keep every tumour tile, subsample benign ones
            keep = np.sort(np.concatenate([np.nonzero(y == 1)[0], rng.choice(np.nonzero(y == 0)[0],
                                           max(0, max_train_tiles - int(y.sum())), replace=False)]))
            x, y = x[keep], y[keep]
        enc, head = train_supervised(x, y, spec, seed + k, epochs, neg_ratio)
        feats[k] = {}
        ys, ms, ps = [], [], []
        for s in roles:
            if s not in tiles:
                feats[k][s] = np.zeros((0, slides[s].features.shape[1]), np.float32)
                continue
            feats[k][s], score = embed(enc, head, tiles[s], input_size_of(spec))
            if roles[s] == "test":
                ps.append(score)
                ys.append(slides[s].tumour)
                ms.append(slides[s].mimic)
        per_fold.append((np.concatenate(ys), np.concatenate(ms), np.concatenate(ps)))
        print(f"  supervised encoder fold {k}: {len(x)} training tiles ({int(y.sum())} tumour), test tile AUC "
              f"{tile_aucs(*per_fold[-1])['all']:.3f}, {time.time() - t0:.0f} s", flush=True)
    return fold_tile_aucs(per_fold), feats


def mil_auc(bags_per_fold: dict[int, dict[str, np.ndarray]], labels: dict[str, int], folds, model: str,
            params: dict, seeds: list[int]) -> dict[str, object]:
    """Slide AUC of `model`: test predictions pooled over folds (per seed) and over folds x seeds."""
    from slidemil.evaluate.metrics import auc_binary
    from slidemil.mil.loop import train_mil

    per_seed, ys_all, ps_all = [], [], []
    for seed in seeds:
        ys, ps = [], []
        for k in sorted(folds["fold"].unique()):
            roles = roles_of(folds, k)
            res = train_mil(bags_per_fold[k], labels, roles, model, 2, dict(params), seed)
            for s, r in roles.items():
                if r == "test" and s in res.probs:
                    ys.append(labels[s])
                    ps.append(float(res.probs[s][1]))
        per_seed.append(auc_binary(np.array(ys), np.array(ps)))
        ys_all += ys
        ps_all += ps
    return {"auc": auc_binary(np.array(ys_all), np.array(ps_all)), "auc_per_seed": per_seed,
            "auc_seed_mean": float(np.mean(per_seed)), "auc_seed_sd": float(np.std(per_seed))}


def mil_params(cfg: dict, model: str) -> tuple[str, dict]:
    """(registered model, training + model params) of MIL run `model` from the config's `mil` block."""
    mil = dict(cfg["mil"])
    try:
        from slidemil.mil.params import run_params

        p = run_params(mil, model)
    except ImportError:  # older layout: one flat block
        p = {k: v for k, v in mil.items() if k != "models"}
    p = dict(p)
    p.pop("device", None)
    return p.pop("model", model), p


def _r(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)


def check_bounds(figures: dict[str, float]) -> dict[str, bool | None]:
    """Each bound: True/False, or None when its figure was not measured (NaN)."""
    def test(v: float, holds: bool) -> bool | None:
        return None if np.isnan(v) else bool(holds)

    ok = {}
    for key, (op, bound) in BOUNDS.items():
        v = figures[key]
        ok[key] = test(v, v <= bound if op == "<=" else v >= bound)
    for feats in ("random", "supervised"):
        m, ab = figures[f"mean_{feats}_slide_auc"], figures[f"abmil_{feats}_slide_auc"]
        ok[f"mean_below_abmil_{feats}"] = test(m + ab, m < ab)
    return ok


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="results/ directory of a finished demo run")
    ap.add_argument("--config", default="config/config.yaml", help="the run's config (encoder, samples, mil)")
    ap.add_argument("--samples", default=None, help="sample sheet (default: the config's `samples`)")
    ap.add_argument("--encoder", default=None, help="feature set of the floor (default: the config's first encoder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="MIL training seeds")
    ap.add_argument("--sup-epochs", type=int, default=8, help="supervised encoder epochs per fold")
    ap.add_argument("--neg-ratio", type=float, default=2.0, help="benign tiles per tumour tile in an epoch")
    ap.add_argument("--max-train-tiles", type=int, default=6000, help="training tiles per fold (all tumour kept)")
    ap.add_argument("--mil-on", nargs="+", default=["random", "supervised"], choices=["random", "supervised"],
                    help="feature sets MIL is trained on (a bound whose figure is not measured reads null)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more than one thrashes on a busy machine)")
    a = ap.parse_args(argv)

    import torch
    import yaml

    from slidemil.config import EncoderSpec

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    cfg = yaml.safe_load(Path(a.config).read_text())
    enc_cfg = next(e for e in cfg["encoders"] if a.encoder in (None, e["name"]))
    spec = EncoderSpec(**{k: v for k, v in enc_cfg.items() if k in EncoderSpec.__dataclass_fields__})
    seed = int(cfg.get("seed", 0))
    slides, folds = load_run(Path(a.results), spec.name, Path(a.samples or cfg["samples"]), cfg["classes"])
    labels = {s: sl.label for s, sl in slides.items()}
    n_tiles = sum(len(sl.tumour) for sl in slides.values())
    n_pos = sum(labels.values())
    print(f"demo run {a.results}: {len(slides)} slides ({n_pos} tumour, {len(slides) - n_pos} normal), "
          f"{n_tiles} tiles, {sum(int(sl.tumour.sum()) for sl in slides.values())} tumour and "
          f"{sum(int(sl.mimic.sum()) for sl in slides.values())} mimic tiles, "
          f"{folds['fold'].nunique()} folds, encoder {spec.name}", flush=True)

    probe = random_probe(slides, folds, seed)
    print(f"random features, linear probe: tile AUC {probe['all']:.3f} mean of folds (pooled {probe['pooled_all']:.3f}; "
          f"tumour vs mimic {probe['vs_mimic']:.3f}, vs other benign {probe['vs_other']:.3f})", flush=True)
    t0 = time.time()
    sup, sup_feats = supervised(slides, folds, spec, seed, a.sup_epochs, a.neg_ratio, a.max_train_tiles)
    t_sup = time.time() - t0
    print(f"supervised {spec.arch} (depth {spec.depth}): tile AUC {sup['all']:.3f} mean of folds (pooled "
          f"{sup['pooled_all']:.3f}; tumour vs mimic {sup['vs_mimic']:.3f}, vs other benign {sup['vs_other']:.3f}); "
          f"{t_sup:.0f} s", flush=True)

    rand_feats = {k: {s: sl.features for s, sl in slides.items()} for k in sup_feats}
    mil = {}
    t0 = time.time()
    for feats_name, bags in (("random", rand_feats), ("supervised", sup_feats)):
        if feats_name not in a.mil_on:
            mil.update({f"{run}_{feats_name}": {"auc": float("nan"), "auc_per_seed": []} for run in ("mean", "abmil")})
            continue
        for run in ("mean", "abmil"):
            model, params = mil_params(cfg, run)
            mil[f"{run}_{feats_name}"] = r = mil_auc(bags, labels, folds, model, params, a.seeds)
            print(f"{run} on {feats_name} features: slide AUC {r['auc']:.3f} pooled over folds x {len(a.seeds)} "
                  f"seeds (per seed {', '.join(f'{v:.3f}' for v in r['auc_per_seed'])})", flush=True)
    t_mil = time.time() - t0

    figures = {
        "random_probe_tile_auc": probe["all"],
        "supervised_tile_auc": sup["all"],
        "abmil_random_slide_auc": mil["abmil_random"]["auc"],
        "abmil_supervised_slide_auc": mil["abmil_supervised"]["auc"],
        "mean_random_slide_auc": mil["mean_random"]["auc"],
        "mean_supervised_slide_auc": mil["mean_supervised"]["auc"],
    }
    ok = check_bounds(figures)
    for key, good in ok.items():
        print(f"{'not measured' if good is None else 'PASS' if good else 'FAIL'} {key}")
    out = {
        **{k: (None if np.isnan(v) else round(v, 4)) for k, v in figures.items()},
        **{f"{name}_tile_auc_{k}": _r(v) if isinstance(v, float) else [_r(x) for x in v]
           for name, r in (("random_probe", probe), ("supervised", sup)) for k, v in r.items() if k != "all"},
        "mil": {k: {kk: (_r(vv) if isinstance(vv, float) else [_r(x) for x in vv]) for kk, vv in v.items()}
                for k, v in mil.items()},
        "bounds_met": ok, "all_bounds_met": all(v is True for v in ok.values()),
        "n_slides": len(slides), "n_tumour_slides": n_pos, "n_tiles": n_tiles,
        "n_folds": int(folds["fold"].nunique()), "seeds": a.seeds, "encoder": spec.name,
        "supervised": {"epochs": a.sup_epochs, "neg_ratio": a.neg_ratio, "max_train_tiles": a.max_train_tiles},
        "wall_s": {"supervised": round(t_sup), "mil": round(t_mil), "total": round(time.time() - t_start)},
        "threads": a.threads,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
