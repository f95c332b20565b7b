"""DAG planning time against cohort size: `snakemake -n` on generated sheets of 1k and 10k slides.

    .venv/bin/python benchmarks/dag.py                 # 1,000 and 10,000 slides
    .venv/bin/python benchmarks/dag.py --sizes 200 2000  # quicker
    .venv/bin/python benchmarks/dag.py --floor           # also Snakemake alone on a DAG of the same shape

Each slide is a symlink to one small real scan (../shared/data/CMU-1-Small-Region.svs), so the
sheet passes the checks run at planning time. Planning should grow linearly with the number of
slides: a 10x larger sheet should take at most ~12x longer (target: <= 60 s for 10k slides).
With --floor it also dry-runs benchmarks/dag_floor.smk (the same per-slide jobs and 48 MIL-like jobs
that read one manifest of every slide's features and graph, as the workflow's MIL jobs read the
feature and graph indexes; nothing of slidemil) at the same sizes: what Snakemake itself costs for a
DAG of that shape. Prints one line per size, then one JSON object (wall
and CPU seconds and jobs per size, and the ratios of the largest to the smallest) as the last line.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT.parent / "shared" / "data" / "CMU-1-Small-Region.svs"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--cores", "2", "-n", "--quiet", "rules"]


def make_cohort(workdir: Path, n: int) -> None:
    """A sample sheet of n symlinked slides and a config that runs the real (non-demo) path."""
    slides = workdir / "slides"
    slides.mkdir(parents=True)
    rows = ["slide_id\tpath\tlabel\tpatient_id"]
    for i in range(n):
        (slides / f"s{i:05d}.svs").symlink_to(SLIDE)
        rows.append(f"s{i:05d}\tslides/s{i:05d}.svs\t{'tumour' if i % 2 else 'normal'}\tP{i:05d}")
    (workdir / "samples.tsv").write_text("\n".join(rows) + "\n")
    (workdir / "config.yaml").write_text(yaml.safe_dump({"samples": "samples.tsv", "demo": {"enabled": False}}))


def dry_run(cmd: list[str], where: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system: less swayed by other load on a shared machine) and jobs."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"dry run failed for {where}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    jobs = re.search(r"^total\s+(\d+)$", proc.stdout, re.M)
    return took, cpu, int(jobs.group(1)) if jobs else 0


def plan_seconds(workdir: Path) -> tuple[float, float, int]:
    return dry_run([*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
                    "--configfile", str(ROOT / "config" / "config.yaml"), str(workdir / "config.yaml")], workdir)


def floor_seconds(workdir: Path, n: int) -> tuple[float, float, int]:
    workdir.mkdir(parents=True)
    return dry_run([*SNAKEMAKE, "--snakefile", str(ROOT / "benchmarks" / "dag_floor.smk"), "--directory",
                    str(workdir), "--config", f"nslides={n}", "manifest=True"], workdir)  # the workflow's shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--floor", action="store_true", help="also dry-run benchmarks/dag_floor.smk at each size")
    args = ap.parse_args()
    if not SLIDE.is_file():
        raise SystemExit(f"{SLIDE} not found: this benchmark needs ../shared/data beside the checkout")
    seconds, cpu, jobs, floor_cpu = {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="slidemil-dag-") as tmp:
        for n in args.sizes:
            workdir = Path(tmp) / f"n{n}"
            make_cohort(workdir, n)
            seconds[n], cpu[n], jobs[n] = plan_seconds(workdir)
            print(f"{n:>6} slides: dry run {seconds[n]:.1f} s, CPU {cpu[n]:.1f} s, {jobs[n]} jobs "
                  f"({1000 * seconds[n] / n:.1f} ms per slide)", flush=True)
            if args.floor:
                wall, floor_cpu[n], floor_jobs = floor_seconds(Path(tmp) / f"floor{n}", n)
                print(f"{n:>6} slides: bare Snakefile of the same shape {wall:.1f} s, CPU {floor_cpu[n]:.1f} s, "
                      f"{floor_jobs} jobs", flush=True)
    small, large = min(seconds), max(seconds)
    result = {"benchmark": "dag", "seconds": {str(k): round(v, 2) for k, v in seconds.items()},
              "cpu_seconds": {str(k): round(v, 2) for k, v in cpu.items()},
              "jobs": {str(k): v for k, v in jobs.items()}, "size_ratio": large / small,
              "time_ratio": round(seconds[large] / seconds[small], 2),
              "cpu_ratio": round(cpu[large] / cpu[small], 2)}
    if floor_cpu:
        result["floor_cpu_seconds"] = {str(k): round(v, 2) for k, v in floor_cpu.items()}
    print(json.dumps(result))

if __name__ == "__main__":
    main()
