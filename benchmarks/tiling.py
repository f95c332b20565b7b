"""Tiling speed on one core: CLAM-style baseline vs slidemil's tile stage vs the JPEG decode ceiling.

    .venv/bin/python benchmarks/tiling.py            # 40960 x 30720 px synthetic slide (cached)
    .venv/bin/python benchmarks/tiling.py --quick    # 8192 x 6144 px, a sanity run in seconds
    .venv/bin/python benchmarks/tiling.py --slide my.svs --mpp 0.25

Makes (once, cached under --cache) a pyramidal JPEG TIFF at 0.25 mpp with ~40% tissue, written by
pyvips `tiffsave(pyramid=True)` (levels 1, 2, 4, ...), plus an SVS-like copy of it with levels
1, 4, 16, ... (the same JPEG tiles copied verbatim, no re-encode). Two cases, same mask, same tiles:

  level    0.5 mpp on the 2x pyramid: the target is a pyramid level
  between  0.5 mpp on the 4x pyramid: from the 0.25 mpp level, halved (CLAM's 20x-from-40x path)

For each case, each in a fresh child process pinned to one CPU with every thread pool at 1:
  baseline  OpenSlide read_region per tile at the level, PIL resize when the level does not match,
            tiles written to HDF5 (uncompressed, chunk = 1 tile), as CLAM's patching does
  slidemil  slidemil.slides.tiling.tile_slide (threads=1; also threads=2 and copy_jpeg=False for reference)
  ceiling   the level's JPEG tiles that cover the selected tiles, read (os.pread) and fully decoded,
            no other work, with imagecodecs and with simplejpeg (when installed): the faster counts;
            as tiles/s of the selected (output) tiles
Rates are tiles per CPU-second of the pinned child (best of --repeat, runs interleaved; on an idle
core that is tiles per second; wall-clock rates are in the JSON too); threads=2 is by wall clock.
Prints tiles/s and the ratios; peak RSS of the slidemil child; last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "VIPS_CONCURRENCY": "1", "NUMEXPR_NUM_THREADS": "1"}
os.environ.update(SINGLE_THREAD_ENV)  # before numpy / pyvips load, here and in spawned children

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


# --- the synthetic slide --------------------------------------------------------------------

def _texture(rng: np.random.Generator, n: int = 2048) -> np.ndarray:
    """An H&E-like RGB patch: eosin stroma with fibres and haematoxylin nuclei (Beer-Lambert)."""
    from scipy import ndimage as ndi

    e = ndi.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), 6)
    e = 0.25 + 0.12 * e / e.std()
    f = ndi.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), (1, 8))
    e += 0.08 * np.clip(f / f.std(), 0, None)
    nuc = np.zeros((n, n), np.float32)
    k = n * n // 300
    nuc[rng.integers(0, n, k), rng.integers(0, n, k)] = 1
    nuc = ndi.gaussian_filter(ndi.grey_dilation(nuc, size=(5, 5)), 1.2) * 1.2
    h = 0.15 + 0.9 * np.clip(nuc, 0, 1.2) + 0.03 * rng.standard_normal((n, n), dtype=np.float32)
    od = (h[..., None] * np.array([0.650, 0.704, 0.286], np.float32)
          + e[..., None] * np.array([0.072, 0.990, 0.105], np.float32))
    rgb = 255 * np.exp(-np.clip(od, 0, None)) + rng.normal(0, 3, (n, n, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_slide(path: Path, width: int, height: int, mpp: float = 0.25, tissue: float = 0.4, seed: int = 0,
               quality: int = 85) -> None:
    """Pyramidal JPEG TIFF (256 px tiles, levels 1, 2, 4, ...) with `tissue` of its area tissue.

    Cheap at any size: a 2048 px texture replicated by libvips under a low-resolution blob mask,
    streamed to disk by tiffsave, so memory stays small whatever width x height is.
    """
    import pyvips
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    tex = pyvips.Image.new_from_array(_texture(rng)).copy(interpretation="srgb")
    lw, lh = max(8, width // 64), max(8, height // 64)
    field = ndi.gaussian_filter(rng.standard_normal((lh, lw)), min(lw, lh) / 12)
    low = (field > np.quantile(field, 1 - tissue)).astype(np.uint8) * 255
    mask = pyvips.Image.new_from_array(low).resize(64, kernel="linear")
    mask = mask.crop(0, 0, min(width, mask.width), min(height, mask.height)).embed(0, 0, width, height,
                                                                                    extend="copy")
    tissue_img = tex.replicate(width // tex.width + 1, height // tex.height + 1).crop(0, 0, width, height)
    glass = (pyvips.Image.black(width, height, bands=3) + [242, 241, 243]).cast("uchar").copy(interpretation="srgb")
    img = (mask > 127).ifthenelse(tissue_img, glass)
    tmp = path.with_name(path.name + ".part")
    img.tiffsave(str(tmp), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg",
                 Q=quality, xres=1000.0 / mpp, yres=1000.0 / mpp, resunit="cm", bigtiff=True)
    tmp.replace(path)


def make_svs_like(src: Path, dst: Path) -> None:
    """Copy levels 1, 4, 16, ... of a 2x pyramid into a new TIFF, JPEG tiles verbatim (as Aperio SVS)."""
    import tifffile

    tmp = dst.with_name(dst.name + ".part")
    with tifffile.TiffFile(src) as tf, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        fh = tf.filehandle
        for k, page in enumerate(tf.pages):
            if k % 2:
                continue

            def segments(page=page):
                for off, n in zip(page.dataoffsets, page.databytecounts):
                    fh.seek(off)
                    yield fh.read(n)

            tw.write(segments(), shape=page.shape, dtype=page.dtype, photometric=page.photometric,
                     compression=page.compression, tile=(page.tilelength, page.tilewidth),
                     jpegtables=page.jpegtables, subsampling=page.subsampling, resolution=page.resolution,
                     resolutionunit=page.resolutionunit, subfiletype=1 if k else 0)
    tmp.replace(dst)


# --- measurements, each in a fresh single-CPU child ---------------------------------------

def _pin() -> None:
    os.environ.update(SINGLE_THREAD_ENV)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _rss_mib() -> float:
    """Peak RSS of this process. On Linux, VmHWM: getrusage's ru_maxrss survives fork + exec, so a
    spawned child would report its parent's peak if that was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; macOS: bytes


def _child(fn, args, q) -> None:
    try:
        _pin()
        out = fn(*args)
        out["peak_rss_mib"] = _rss_mib()
        q.put(out)
    except BaseException as e:  # report, do not hang the parent
        q.put({"error": f"{type(e).__name__}: {e}"})


def in_child(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    out = q.get()
    p.join()
    if "error" in out:
        raise RuntimeError(f"{fn.__name__}: {out['error']}")
    return out


def run_slidemil(slide: str, mask: str, out: str, target_mpp: float, tile_size: int, threads: int,
                 copy_jpeg: bool = True) -> dict:
    if threads > 1 and hasattr(os, "sched_setaffinity"):  # undo _pin: `threads` CPUs
        os.sched_setaffinity(0, set(range(min(threads, os.cpu_count() or 1))))
    import imagecodecs, openslide, pyvips, tqdm, zarr  # noqa: E401,F401  (process start-up, not tiling)

    from slidemil.slides.tiling import TileParams, tile_slide

    params = TileParams(target_mpp=target_mpp, tile_size=tile_size, copy_jpeg=copy_jpeg)
    with Timer() as t:
        attrs = tile_slide(slide, mask, out, params, "bench", progress=False, threads=threads)
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    return {"n": attrs["n_tiles"], **t.result, "store_bytes": size, "reader": attrs["reader"],
            "decode_denom": attrs["decode_denom"], "tiles_copied": attrs["tiles_copied"], "level": attrs["level"]}


def run_baseline(slide: str, store: str, out: str, target_mpp: float, tile_size: int) -> dict:
    """CLAM-style: read_region(coord, level, (side, side)) per tile, resize, HDF5 'imgs' per tile."""
    import h5py
    import openslide
    import zarr
    from PIL import Image

    g = zarr.open_group(store, mode="r")
    coords = g["coords"][:]
    level, ds = int(g.attrs["level"]), float(g.attrs["level_downsample"])
    side = int(round(g.attrs["tile_size_level0"] / ds))
    with Timer() as t, h5py.File(out, "w") as f:
        s = openslide.OpenSlide(slide)
        dset = f.create_dataset("imgs", shape=(len(coords), tile_size, tile_size, 3), dtype="uint8",
                                chunks=(1, tile_size, tile_size, 3))
        f.create_dataset("coords", data=coords)
        batch = []
        for i, (x, y) in enumerate(coords):
            img = s.read_region((int(x), int(y)), level, (side, side)).convert("RGB")
            if side != tile_size:
                img = img.resize((tile_size, tile_size))  # PIL's default filter (bicubic), as CLAM
            batch.append(np.asarray(img))
            if len(batch) == 256 or i == len(coords) - 1:
                dset[i + 1 - len(batch) : i + 1] = np.stack(batch)
                batch = []
    return {"n": len(coords), **t.result}


def run_ceiling(slide: str, store: str) -> dict:
    """Read and decode every JPEG tile of the level that any selected tile overlaps; nothing else."""
    import imagecodecs
    import openslide
    import zarr

    from slidemil.slides.jpeg_tiles import open_tiled_jpeg_level

    g = zarr.open_group(store, mode="r")
    coords = g["coords"][:]
    level, ds, step = int(g.attrs["level"]), float(g.attrs["level_downsample"]), float(g.attrs["tile_size_level0"])
    lv = open_tiled_jpeg_level(slide, openslide.OpenSlide(slide), level)
    if lv is None:
        return {"n": len(coords), "seconds": float("nan"), "source_tiles": 0}
    need = set()
    for x, y in coords / ds:
        x1, y1 = min(x + step / ds, lv.width) - 1e-6, min(y + step / ds, lv.height) - 1e-6
        for ty in range(int(y) // lv.tile_h, int(y1) // lv.tile_h + 1):
            for tx in range(int(x) // lv.tile_w, int(x1) // lv.tile_w + 1):
                need.add((ty, tx))
    order = sorted(need)
    times = {}
    with Timer() as t:
        for ty, tx in order:  # tifffile's tile bytes + imagecodecs
            imagecodecs.jpeg8_decode(lv.raw(tx, ty), tables=lv.tables, colorspace=lv.colorspace,
                                     outcolorspace=lv.outcolorspace)
    times["imagecodecs"] = t.result
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None and lv.standalone:  # the same through TurboJPEG
        with Timer() as t:
            for ty, tx in order:
                simplejpeg.decode_jpeg(lv.jpeg(tx, ty), colorspace="RGB")
        times["simplejpeg"] = t.result
    decoder = min(times, key=lambda k: times[k]["cpu_seconds"])  # the fastest full decode on offer
    src_bytes = int(sum(lv.counts[ty, tx] for ty, tx in order))
    return {"n": len(coords), **times[decoder], "decoder": decoder, "source_tiles": len(order),
            "source_jpeg_bytes": src_bytes}


class Timer:
    """Wall time and CPU time (user + sys, all threads) of a block."""

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.result = {"seconds": time.perf_counter() - self.t0, "cpu_seconds": time.process_time() - self.c0}


def best(runs: list[dict], key: str = "cpu_seconds") -> dict:
    out = dict(min(runs, key=lambda r: r[key]))
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    return out


def rate(r: dict, key: str = "cpu_seconds") -> float:
    """Tiles per second of `key`: CPU time by default, which a busy shared machine does not inflate
    (a process pinned to one CPU and waiting for it is not charged); on an idle core it equals wall."""
    return r["n"] / r[key] if r[key] > 0 else float("nan")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", help="use this slide (both cases) instead of the synthetic pair")
    ap.add_argument("--mpp", type=float, help="mpp of --slide when its metadata lacks it")
    ap.add_argument("--quick", action="store_true", help="8192 x 6144 px slide, one repeat")
    ap.add_argument("--size", default="40960x30720", help="synthetic slide WxH (default 40960x30720)")
    ap.add_argument("--tile-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the fastest counts")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "slidemil-bench"))
    a = ap.parse_args(argv)
    if a.quick:
        a.size, a.repeat = "8192x6144", 1
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)

    import openslide

    from slidemil.slides.tissue import TissueParams, mask_slide

    if a.slide:
        s = openslide.OpenSlide(a.slide)
        mpp = float(s.properties.get(openslide.PROPERTY_NAME_MPP_X) or a.mpp or "nan")
        if not math.isfinite(mpp):
            ap.error(f"{a.slide} has no mpp in its metadata: pass --mpp")
        dss = list(s.level_downsamples)
        lvl_target = mpp * (dss[1] if len(dss) > 1 else 1.0)
        between = next(f * mpp for f in (2.0, 1.5, 3.0) if all(abs(f / d - 1) > 0.05 for d in dss))
        cases = [("level", a.slide, lvl_target), ("between", a.slide, between)]
        mask_src, name = a.slide, Path(a.slide).stem
    else:
        w, h = (int(v) for v in a.size.lower().split("x"))
        base = cache / f"synthetic-{w}x{h}.tiff"
        svs = cache / f"synthetic-{w}x{h}-4x.tiff"
        if not base.exists():
            t0 = time.perf_counter()
            print(f"making {base} ...", flush=True)
            make_slide(base, w, h)
            print(f"  {time.perf_counter() - t0:.0f} s, {base.stat().st_size / 2**20:.0f} MiB", flush=True)
        if not svs.exists():
            make_svs_like(base, svs)
        mpp = 0.25
        cases = [("level", str(base), 0.5), ("between", str(svs), 0.5)]
        mask_src, name = str(base), base.stem
    mask = cache / f"{name}-mask.png"
    if not mask.exists():
        mask_slide(mask_src, mask, cache / f"{name}-mask-qc.png", TissueParams(), mpp_override=mpp)

    figures: dict = {"slide_size": list(openslide.OpenSlide(cases[0][1]).dimensions), "tile_size": a.tile_size,
                     "repeat": a.repeat, "cpu": 1}
    for case, slide, target in cases:
        store, h5 = cache / f"{case}.zarr", cache / f"{case}.h5"
        runs: dict[str, list[dict]] = {"sm": [], "ce": [], "bl": [], "sm2": [], "re": []}
        for _ in range(a.repeat):  # interleaved, so that a busy spell hits every figure alike
            runs["sm"].append(in_child(run_slidemil, slide, str(mask), str(store), target, a.tile_size, 1))
            runs["ce"].append(in_child(run_ceiling, slide, str(store)))
            runs["bl"].append(in_child(run_baseline, slide, str(store), str(h5), target, a.tile_size))
            runs["sm2"].append(in_child(run_slidemil, slide, str(mask), str(cache / f"{case}-2.zarr"), target,
                                        a.tile_size, 2))
            if runs["sm"][0]["tiles_copied"]:  # the general path: what re-encoding every tile costs here
                runs["re"].append(in_child(run_slidemil, slide, str(mask), str(cache / f"{case}-re.zarr"), target,
                                           a.tile_size, 1, False))
        sm, ce, bl = best(runs["sm"]), best(runs["ce"]), best(runs["bl"])
        sm2 = best(runs["sm2"], "seconds")
        f = {
            "target_mpp": target, "level": sm["level"], "reader": sm["reader"], "decode_denom": sm["decode_denom"],
            "n_tiles": sm["n"], "tiles_copied": sm["tiles_copied"],
            "baseline_tiles_s": rate(bl), "slidemil_tiles_s": rate(sm), "ceiling_tiles_s": rate(ce),
            "slidemil_over_baseline": rate(sm) / rate(bl), "slidemil_over_ceiling": rate(sm) / rate(ce),
            "baseline_wall_tiles_s": rate(bl, "seconds"), "slidemil_wall_tiles_s": rate(sm, "seconds"),
            "ceiling_wall_tiles_s": rate(ce, "seconds"),
            "slidemil_2threads_wall_tiles_s": rate(sm2, "seconds"),
            "slidemil_2threads_speedup_wall": rate(sm2, "seconds") / rate(sm, "seconds"),
            "peak_rss_mib": sm["peak_rss_mib"],
            "peak_rss_mib_2threads": sm2["peak_rss_mib"], "baseline_peak_rss_mib": bl["peak_rss_mib"],
            "store_bytes": sm["store_bytes"], "source_jpeg_bytes": ce.get("source_jpeg_bytes"),
            "source_tiles_decoded": ce.get("source_tiles"), "ceiling_decoder": ce.get("decoder"),
            "store_over_source_bytes": (sm["store_bytes"] / ce["source_jpeg_bytes"]
                                        if ce.get("source_jpeg_bytes") else None),
        }
        if runs["re"]:
            re = best(runs["re"])
            f["slidemil_reencode_tiles_s"] = rate(re)
            f["slidemil_reencode_over_ceiling"] = rate(re) / rate(ce)
            f["slidemil_reencode_over_baseline"] = rate(re) / rate(bl)
        figures[case] = f
        for out in (store, cache / f"{case}-2.zarr", cache / f"{case}-re.zarr"):  # keep only the slides
            shutil.rmtree(out, ignore_errors=True)
        h5.unlink(missing_ok=True)
        print(f"{case:8s} {target} mpp, level {f['level']} ({f['reader']}, 1/{f['decode_denom']}), "
              f"{f['n_tiles']} tiles ({f['tiles_copied']} copied):  baseline {rate(bl):7.0f}/s  "
              f"slidemil {rate(sm):7.0f}/s  ceiling {rate(ce):7.0f}/s  |  slidemil/baseline "
              f"{f['slidemil_over_baseline']:.2f}x  slidemil/ceiling {f['slidemil_over_ceiling']:.2f}  |  "
              f"2 threads {rate(sm2, 'seconds'):.0f}/s wall  peak RSS {f['peak_rss_mib']:.0f} MiB", flush=True)
        if "slidemil_reencode_tiles_s" in f:
            print(f"{'':8s} with copy_jpeg=False (every tile decoded + re-encoded): "
                  f"{f['slidemil_reencode_tiles_s']:.0f}/s"
                  f" = {f['slidemil_reencode_over_baseline']:.2f}x baseline, "
                  f"{f['slidemil_reencode_over_ceiling']:.2f} of ceiling", flush=True)
    figures["peak_rss_mib"] = max(figures[c]["peak_rss_mib"] for c, _, _ in cases)
    print(json.dumps(figures, sort_keys=True), flush=True)
    return figures


if __name__ == "__main__":
    main()
