"""The mil job: one run of config `mil.models` on one fold and seed (rule mil)."""

from __future__ import annotations

from pathlib import Path

from slidemil.config import MilConfig


def mil_job(run: str, params: dict, features_dir: str | Path, folds: str | Path, samples: str | Path, fold: int,
            classes: list[str], out_dir: str | Path, seed: int, threads: int,
            graphs_dir: str | Path | None = None, cache_mb: float = MilConfig.cache_mb) -> None:
    """Train run `run` (`params`: its run params, or the whole `mil` block) and write out_dir."""
    from slidemil.heap import tune_heap

    tune_heap()  # allocator settings that keep peak RSS near the live tensors: before torch is imported
    from slidemil.mil.params import TRAIN_KEYS, check_model_values, run_params
    from slidemil.mil.run import run_fold

    p = run_params(params, run) if "models" in params else dict(params)
    device = p.pop("device", "auto")
    model = p.pop("model", run)  # the registered model of the run (the run's name may be an alias)
    check_model_values(run, model, {k: v for k, v in p.items() if k not in TRAIN_KEYS}, len(classes))
    run_fold(features_dir, folds, samples, fold, model, p, out_dir, seed, classes, device=device,
             threads=threads, graphs_dir=graphs_dir, cache_mb=cache_mb)
