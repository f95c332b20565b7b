"""Planning imports no torch: the catalogue is built from the config as workflow/rules/common.smk builds it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLAN = """
import sys
import yaml
from snakemake.utils import update_config, validate

from slidemil.config import with_defaults
from slidemil.plan.catalogue import build_catalogue

config = {}
for name in ("config.yaml", "zoo.yaml", "benchmark.yaml"):  # as `make benchmark` gives them
    update_config(config, yaml.safe_load(open(f"config/{name}")))
validate(config, schema="workflow/schemas/config.schema.yaml")
config.update(with_defaults(config))
catalogue = build_catalogue(config)
assert catalogue.hnm_rounds and catalogue.fold_encoders and catalogue.mil_runs, "the catalogue is empty"
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_building_the_catalogue_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", PLAN], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"planning imported {out.stdout.strip()}"
