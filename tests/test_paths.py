"""Paths with spaces and non-ASCII characters, in the working directory and the slide files, run through."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from slidemil.cohorts.demo import DemoSlideSpec, make_demo_slide
from test_workflow import _tiny_config, snakemake


@pytest.mark.e2e
def test_workflow_runs_with_spaces_and_accents_in_every_path(tmp_path):
    workdir = tmp_path / "work dir é"
    workdir.mkdir()
    _tiny_config(workdir, n_slides=4, seeds=[0], pretrain={})
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["demo"]["enabled"] = False  # the slides are made here, at paths a user might have
    cfg["mil"]["models"] = {"mean": {}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    slides = workdir / "slides dir ü"
    rows = ["slide_id\tpath\tlabel\tpatient_id\tannotation"]
    for i in range(4):
        name = f"slide with spaces é {i}"
        make_demo_slide(f"s{i}", i % 2, i, slides / f"{name}.tiff", slides / f"{name}.geojson",
                        DemoSlideSpec(width=1536, height=1024))
        rows.append(f"s{i}\tslides dir ü/{name}.tiff\t{'tumour' if i % 2 else 'normal'}\tP{i}\t"
                    f"slides dir ü/{name}.geojson")
    (workdir / "samples.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    snakemake(workdir)
    qc = pd.read_csv(workdir / "results/qc/cohort.tsv", sep="\t", keep_default_na=False)
    assert list(qc["status"]) == ["ok"] * 4, qc
    assert len(pd.read_csv(workdir / "results/benchmark.csv")) == 1
    # the annotation paths reached the heatmaps: tumour slides have an instance AUC
    inst = pd.read_csv(workdir / "results/heatmaps/resnet18_rand/mean/instance_metrics.csv")
    assert inst.loc[inst["label"] == "tumour", "instance_auc"].notna().all()
