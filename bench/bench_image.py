"""Image-fit latency against library size (100 and 1,000 sources), CPU, in-process and through the worker.

    python bench/bench_image.py [--sizes 100 1000] [--targets 5] [--repeats 1] [--write]
    python bench/bench_image.py --indexing 120 [--sizes]

``--indexing N``: bench/bench_indexing.py's N dense meshes (about 5k triangles) indexed with 1 and 2 worker
processes, now that the index stores the silhouette bank: meshes/s, and the bank's share of the wall time (issue:
at least 20 meshes/s on the 2-core machine). ``--sizes`` with no value skips the latency rows.

The library is bench/bench_worker.py's: 100 generated models indexed once, beyond 100 sources the same files
under new names (hard links; every row is its own source, so the ranking's work is that of ``size`` sources). Per
size:

- the silhouette bank's one-off cost (``SilhouetteBank.build``: every source from every view, bit-packed), the
  time to load it back from the index folder and its size on disk;
- the median over ``--targets`` product-style renders (256 x 256, white background, 3/4 view) of ``match_image``
  (foreground, IoU ranking of every source from every view, the shortlist re-ranked by mask distance, proportions
  and view of the best five) and of ``Fitter.fit_image`` (all of it, with the learned tie-breaker and candidates);
- the add-on's image fit through ``python -m backend serve`` (the add-on's own client, default options, part
  meshes of the best candidate, 96-pixel thumbnails of every candidate): the first round trip (model, library
  codes and silhouette bank made or loaded), then the median of the others, beside the fit's own time inside the
  worker.

``--write`` rewrites the ``image`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_worker import build_library, grown_index  # noqa: E402
from report import machine, write_section  # noqa: E402

from backend.fitting import DEFAULT_CHECKPOINT, Fitter  # noqa: E402
from backend.render import Camera  # noqa: E402
from backend.silhouettes import SilhouetteBank, ViewGrid, match_image  # noqa: E402
from blender_addon.client import BackendClient  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402
from training.data.views import render_image  # noqa: E402


def timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def indexing_rate(meshes: int) -> list[str]:
    """Rows of the indexing table: ``meshes`` dense generated meshes indexed from scratch with 1 and 2 jobs."""
    from bench_indexing import dense_shape

    import backend.library.index as index_module
    from training.data.export import write_glb

    work = Path(tempfile.mkdtemp(prefix="rfit-index-"))
    spent = []
    store = index_module._store_silhouettes

    def timed_store(*args):
        started = time.perf_counter()
        try:
            return store(*args)
        finally:
            spent.append(time.perf_counter() - started)

    index_module._store_silhouettes = timed_store
    rows = []
    try:
        for i in range(meshes):
            write_glb(dense_shape(CATEGORIES[i % 3], i // 3), work / "library" / f"{i:04d}.glb")
        for jobs in (1, 2):
            for bank in (False, True):  # interleaved, so the machine's load falls on both alike
                index_module._store_silhouettes = timed_store if bank else (lambda *args: "")
                folder = work / f"index{jobs}{'-bank' if bank else ''}"
                started = time.perf_counter()
                report = index_module.build_index(work / "library", folder, jobs=jobs)
                seconds = time.perf_counter() - started
                assert len(report.added) == meshes and not report.silhouettes, report.summary()
                assert len(list(folder.glob("silhouettes-*.npz"))) == int(bank)
                rerun = timed(index_module.build_index, work / "library", folder)
                share = f"{spent[-2]:.2f} s" if bank else "none stored"
                rows.append(f"| {jobs} | {meshes / seconds:.1f} | {seconds:.2f} s | {share} | {rerun:.2f} s |")
                print(rows[-1], flush=True)
    finally:
        index_module._store_silhouettes = store
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--indexing", type=int, default=0, help="meshes to index (0: no indexing rows)")
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--write", action="store_true", help="rewrite the image section of docs/benchmarks.md")
    args = parser.parse_args()
    if args.indexing:
        rows = indexing_rate(args.indexing)
        print("| worker processes | meshes/s | wall time | of it, silhouettes | re-run with nothing changed |")
        print("\n".join(rows))
    if not args.sizes:
        return
    work = Path(tempfile.mkdtemp(prefix="rfit-image-"))
    rng = np.random.default_rng(0)
    images = [
        render_image(
            generate(CATEGORIES[i % 3], 777, i),
            rng,
            size=256,
            camera=Camera(azimuth=float(rng.uniform(-60, 60)), elevation=float(rng.uniform(20, 35)), fov=40),
        )
        for i in range(args.targets)
    ]
    rows = []
    client = BackendClient(sys.executable)
    try:
        base = build_library(work)
        for size in args.sizes:
            index = grown_index(work, base, size)
            fitter = Fitter.open(args.checkpoint, index, device="cpu")
            cache = work / f"bank-{size}"
            cache.mkdir()
            build = timed(SilhouetteBank.cached, fitter.sources.points, cache)
            started = time.perf_counter()
            bank = SilhouetteBank.cached(fitter.sources.points, cache)
            load = time.perf_counter() - started
            stored = sum(p.stat().st_size for p in cache.glob("silhouettes-*.npz"))
            matching = [timed(match_image, image, fitter.sources, bank) for image in images]
            fitter.fit_image(images[0])  # warm-up: builds the bank once in the index folder (the worker reuses it)
            fitting = [timed(fitter.fit_image, image) for image in images]
            request = dict(index=str(index), checkpoint=args.checkpoint, options={}, meshes_for=[0])
            trips, inside = [], []
            for image in [images[0], *images]:
                started = time.perf_counter()
                answer = client.call("fit", {"image": image}, timeout=1800, thumbnails=96, **request)
                trips.append(time.perf_counter() - started)
                inside.append(answer["seconds"])
            row = {
                "size": size,
                "build": build,
                "load": load,
                "stored": stored,
                "match_image": (np.median(matching), np.max(matching)),
                "fit_image": (np.median(fitting), np.max(fitting)),
                "first_trip": trips[0],
                "trip": (np.median(trips[1:]), np.max(trips[1:])),
                "inside": np.median(inside[1:]),
            }
            rows.append(row)
            print(row, flush=True)
        client.shutdown()
    finally:
        client.kill()
        shutil.rmtree(work, ignore_errors=True)
    views = len(ViewGrid())
    body = [
        "## Image-fit latency against library size",
        "",
        f"Command: `python bench/bench_image.py --sizes {' '.join(map(str, args.sizes))} --targets {args.targets}` "
        f"({machine()}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; the machine was shared).",
        "Library: bench_worker.py's 100 generated, indexed models, beyond 100 the same files under new names. "
        f"Silhouettes: every source from {views} views, 32 x 32, bit-packed, kept in the index folder. Each fit: a "
        "256 x 256 render on white. `match_image`: the silhouette ranking, re-ranking and proportions alone; "
        "`Fitter.fit_image`: the whole call; worker: the add-on's request through `python -m backend serve` "
        "(part meshes of the best candidate, 96-pixel thumbnails of every candidate), median (max) of "
        f"{args.targets} after a first one.",
        "",
        "| sources | bank built once | loaded | stored | `match_image` | `Fitter.fit_image` | worker: first round trip "
        "| worker round trip | fit inside the worker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        body.append(
            f"| {r['size']:,} | {r['build']:.2f} s | {r['load'] * 1000:.0f} ms | {r['stored'] / 1e6:.1f} MB "
            f"| {r['match_image'][0] * 1000:.0f} ms ({r['match_image'][1] * 1000:.0f}) "
            f"| {r['fit_image'][0] * 1000:.0f} ms ({r['fit_image'][1] * 1000:.0f}) | {r['first_trip']:.2f} s "
            f"| {r['trip'][0] * 1000:.0f} ms ({r['trip'][1] * 1000:.0f}) | {r['inside'] * 1000:.0f} ms |"
        )
    print("\n".join(body))
    if args.write:
        write_section("image", "\n".join(body))


if __name__ == "__main__":
    main()
