"""The evaluation jobs that read a whole model's runs (rules heatmaps, probe), from the workflow's paths."""

from __future__ import annotations

import logging
from pathlib import Path

from slidemil.config import FrocParams

log = logging.getLogger(__name__)


def heatmaps_job(run_dirs: list[str], features_dir: str | Path, samples: str | Path, annotations: str | Path | None,
                 out_dir: str | Path, png_per_fold: int, froc: FrocParams, title: str | None = None) -> None:
    """Heatmaps, QuPath GeoJSON, instance AUC and lesion FROC of one (encoder, model) on its test slides."""
    from slidemil.cohorts.sheet import read_annotation_table, read_sheet
    from slidemil.evaluate.heatmaps import heatmaps_for_model

    sheet = read_sheet(samples).set_index("slide_id", drop=False)
    table = heatmaps_for_model(run_dirs, features_dir, sheet, read_annotation_table(annotations)["tumour"], out_dir,
                               png_per_fold=png_per_fold, froc=froc, title=title)
    if table["instance_auc"].notna().any():
        log.info("instance AUC (annotated test slides): mean %.3f over %d slides", table["instance_auc"].mean(),
                 table["instance_auc"].notna().sum())


def probe_job(encoder: str, features_dir: str, folds: str | Path, samples: str | Path, classes: list[str],
              annotations: str | Path | None, out: str | Path, seed: int, n_boot: int) -> None:
    """One encoder's linear probe row (tile AUC against tumour annotations), written to `out`."""
    from slidemil.cohorts.sheet import label_indices, read_annotation_table
    from slidemil.evaluate.probe import probe_encoder, write_probe_row

    row = probe_encoder(encoder, features_dir, folds, label_indices(samples, classes),
                        read_annotation_table(annotations)["tumour"], seed=seed, n_boot=n_boot)
    write_probe_row(row, out)
    log.info("probe %s: tile AUC %.3f [%.3f, %.3f], tumour vs mimic %.3f", encoder, row["tile_auc"],
             row["tile_auc_ci_lo"], row["tile_auc_ci_hi"], row["tile_auc_vs_mimic"])
