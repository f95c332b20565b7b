"""Sample sheets for the real cohorts (slidemil.cohorts.registry lists the builders).

    python -m slidemil.cohorts camelyon16 --slides CAMELYON16/ --reference testing/reference.csv \
        [--annotations lesion_annotations/] --out samples.tsv
    python -m slidemil.cohorts tcga_nsclc --manifest gdc_manifest.txt --clinical clinical.tsv \
        --slides slides/ --out samples.tsv
    python -m slidemil.cohorts tcga_rcc --manifest kirc.txt=KIRC --manifest kirp.txt=KIRP \
        --manifest kich.txt=KICH --slides slides/ --out samples.tsv

Input problems stop the builder with a one-line ``CohortError`` naming the file and row (missing
columns, unknown labels, malformed names). A slide listed in the reference/manifest but absent on
disk is dropped with a warning and a count, or is an error with ``--strict``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from slidemil.cohorts import camelyon16, tcga  # noqa: F401 - importing them registers their builders
from slidemil.cohorts.registry import BUILDERS
from slidemil.cohorts.sheet import CohortError, write_sheet


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slidemil.cohorts", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cohort", required=True)
    for name, builder in BUILDERS.items():
        s = sub.add_parser(name, help=builder.help)
        builder.add_arguments(s)
        s.add_argument("--out", required=True, help="sample sheet to write (TSV)")
        s.add_argument("--strict", action="store_true", help="error, not warning, when a listed slide is missing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        write_sheet(BUILDERS[args.cohort].build(args), args.out)
    except CohortError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
