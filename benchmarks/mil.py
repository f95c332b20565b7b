"""MIL training speed and memory: bags streamed from Zarr feature stores vs bags already in memory.

    .venv/bin/python benchmarks/mil.py                       # CPU: 6 bags x 10,000 x 1024 float16, ~5 min of one core
    .venv/bin/python benchmarks/mil.py --bags 400            # the issue's 400 bags (CPU: ~5 h)
    .venv/bin/python benchmarks/mil.py --device cuda         # GPU figures, 400 bags by default

--bags defaults to 400 (issue 10) on a GPU and to 6 on the CPU: one CPU thread trains a 10,000-tile
bag in ~9 s (TransMIL) and ~13 s (SRMIL), so 400 bags x 3 models x 2 modes would take hours. Peak
RSS of a streamed epoch does not grow with the bag count (at most two bags are held), so 6 bags
measure it; the time ratio only gets steadier with more.

Writes (once, cached under --cache) --bags synthetic feature stores of --tiles x --dim float16
features on a raster tile grid, half of them labelled positive, with slidemil.slides.store.write_features
(the `embed` stage's writer). Then, for each model (gated ABMIL, TransMIL, SRMIL by default, at
their authors' sizes), one training epoch over every bag with slidemil.mil.loop.train_epoch (the
`mil` stage's loop) in two modes, each in a fresh child process:

  memory  every bag read into RAM first (not timed), then the epoch
  stream  slidemil.mil.data.FeatureStoreBags with cache_mb=0: each bag read from its store when
          the loop needs it (the next bag is read by a background thread while the current trains)

Figures per (model, mode): epoch wall time (best of --repeat; modes interleaved), CPU time, and
the child's peak RSS. Targets (issue 10): stream <= 1.2 x memory; stream peak RSS <= 2 GiB.
The stores are read through the OS page cache when they fit in RAM (as in later epochs of a job).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_stores(cache: Path, n_bags: int, n_tiles: int, dim: int, seed: int = 0) -> list[str]:
    """Synthetic feature stores <cache>/<bag>.zarr (reused when present); returns the bag ids."""
    from slidemil.slides.store import write_features

    ids = [f"bag{i:04d}" for i in range(n_bags)]
    width = int(np.ceil(np.sqrt(n_tiles)))
    grid = np.stack([np.arange(n_tiles) % width, np.arange(n_tiles) // width], 1)
    for i, sid in enumerate(ids):
        path = cache / f"{sid}.zarr"
        if path.exists():
            continue
        rng = np.random.default_rng(seed + i)
        x = rng.standard_normal((n_tiles, dim), dtype=np.float32)
        if i % 2:
            x[: n_tiles // 100, 0] += 3.0  # 1% witness tiles in positive bags
        write_features(path, x.astype(np.float16), grid * 224, grid, {"encoder": "synthetic"})
    return ids


def _child(mode: str, model: str, cache: str, ids: list[str], dim: int, device: str, threads: int,
           queue: mp.Queue) -> None:
    """One epoch of `model` in `mode`; puts (wall_s, cpu_s, peak_rss_mb, rss_before_epoch_mb) on the queue."""
    from slidemil.heap import tune_heap

    tune_heap()  # as the `mil` command does, before torch is imported
    import torch

    from slidemil.mil.models import build_mil
    from slidemil.config import MilTrain
    from slidemil.device import resolve_device
    from slidemil.mil.data import FeatureStoreBags, Standardized

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = resolve_device(device)
    store = FeatureStoreBags(cache, ids, cache_mb=0 if mode == "stream" else float("inf"))
    if mode == "memory":
        for sid in ids:  # read everything first (untimed)
            store[sid]
    labels = {sid: i % 2 for i, sid in enumerate(ids)}
    net = Standardized(build_mil(model, dim, 2), np.zeros(dim), np.ones(dim)).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    from slidemil.mil.loop import train_epoch

    steps = [[sid] for sid in ids]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    before = _rss_mb()  # torch, the model and its optimiser (+ the bags in memory mode), before the epoch
    wall, cpu = time.perf_counter(), time.process_time()
    train_epoch(net, opt, store, steps, labels, dataclasses.asdict(MilTrain()), dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    queue.put((wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, before))


def _rss_mb() -> float:
    """Current resident set size (MB) of this process."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def run_child(*args) -> tuple[float, float, float, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bags", type=int, default=None, help="default: 400 with --device cuda, 6 on the CPU")
    ap.add_argument("--tiles", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--models", nargs="+", default=["abmil", "transmil", "srmil"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    ap.add_argument("--repeat", type=int, default=1, help="epochs per mode; the fastest counts")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/slidemil_bench_mil"))
    a = ap.parse_args(argv)
    if a.bags is None:
        a.bags = 400 if a.device.startswith("cuda") else 6

    cache = a.cache / f"{a.bags}x{a.tiles}x{a.dim}"
    cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    ids = make_stores(cache, a.bags, a.tiles, a.dim)
    print(f"{a.bags} stores of {a.tiles} x {a.dim} float16 ready in {time.perf_counter() - t:.0f} s", flush=True)

    figures: dict = {"bags": a.bags, "tiles": a.tiles, "dim": a.dim, "device": a.device, "threads": a.threads,
                     "models": {}}
    for model in a.models:
        runs: dict[str, list] = {"memory": [], "stream": []}
        for _ in range(a.repeat):
            for mode in ("memory", "stream"):  # interleaved: a load spike hits both modes alike
                runs[mode].append(run_child(mode, model, str(cache), ids, a.dim, a.device, a.threads))
        row = {}
        for mode, results in runs.items():
            wall, cpu = min(results)[:2]
            row[f"{mode}_epoch_s"] = round(wall, 2)
            row[f"{mode}_cpu_s"] = round(cpu, 2)
            row[f"{mode}_peak_rss_mb"] = round(max(r[2] for r in results))
            row[f"{mode}_rss_before_epoch_mb"] = round(max(r[3] for r in results))
        row["stream_over_memory"] = round(row["stream_epoch_s"] / row["memory_epoch_s"], 3)
        # CPU seconds (all threads, the prefetcher's reads included): steadier than wall time on busy cores
        row["stream_over_memory_cpu"] = round(row["stream_cpu_s"] / row["memory_cpu_s"], 3)
        row["targets_met"] = row["stream_over_memory"] <= 1.2 and row["stream_peak_rss_mb"] <= 2048
        figures["models"][model] = row
        print(f"{model:9s} epoch: memory {row['memory_epoch_s']:8.1f} s  stream {row['stream_epoch_s']:8.1f} s  "
              f"(x{row['stream_over_memory']:.2f})  peak RSS: memory {row['memory_peak_rss_mb']} MB, "
              f"stream {row['stream_peak_rss_mb']} MB", flush=True)
    print(json.dumps(figures, sort_keys=True), flush=True)
    return figures


if __name__ == "__main__":
    main()
