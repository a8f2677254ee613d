"""Image-fit latency against library size (100 and 1,000 sources), CPU.

    python bench/bench_image.py [--sizes 100 1000] [--targets 5] [--write]

A real library of ``--base`` generated models is indexed once and grown synthetically as
bench/bench_fit.py does (per-axis scaled copies, so no two silhouettes are alike). Per size:
the one-off cost of the library's silhouettes (``SilhouetteBank.build``, then kept bit-packed
in the index folder and loaded from there), and the median over ``--targets`` product-style
renders (256 x 256, white background) of ``match_image`` (foreground, ranking every source
from every view, proportions of the best five) and of ``Fitter.fit_image``. ``--write``
rewrites the ``image`` section of docs/benchmarks.md.
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

from bench_fit import grown  # noqa: E402
from report import machine, write_section  # noqa: E402

from backend.fitting import DEFAULT_CHECKPOINT, Fitter  # noqa: E402
from backend.library import build_index  # noqa: E402
from backend.render import Camera  # noqa: E402
from backend.silhouettes import SilhouetteBank, ViewGrid, match_image  # noqa: E402
from training.data.export import write_glb  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402
from training.data.views import render_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--base", type=int, default=60, help="real generated models indexed")
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", help="keep the library and index here (reused when present)")
    parser.add_argument("--write", action="store_true", help="rewrite the image section of docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rfit-image-"))
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
    try:
        library = work / "library"
        if not library.exists():
            for i in range(args.base):
                write_glb(generate(CATEGORIES[i % 3], 4242, i // 3), library / f"{i:04d}.glb")
        build_index(library, work / "index", jobs=2)
        fitter = Fitter.open(args.checkpoint, work / "index", device="cpu")
        for size in args.sizes:
            sized = grown(fitter, size)
            cache = work / f"silhouettes-{size}"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir()
            started = time.perf_counter()
            SilhouetteBank.cached(sized.sources.points, cache)
            build = time.perf_counter() - started
            started = time.perf_counter()
            bank = SilhouetteBank.cached(sized.sources.points, cache)
            load = time.perf_counter() - started
            stored = sum(p.stat().st_size for p in cache.glob("silhouettes-*.npz"))
            timings = {"match_image": [], "Fitter.fit_image": []}
            for image in images:
                started = time.perf_counter()
                match_image(image, sized.sources, bank)
                timings["match_image"].append(time.perf_counter() - started)
            sized.__dict__.pop("_silhouettes", None)  # a grown copy gets its own bank (kept in the index folder)
            sized.fit_image(images[0])  # warm-up: builds or loads the bank once
            for image in images:
                started = time.perf_counter()
                sized.fit_image(image)
                timings["Fitter.fit_image"].append(time.perf_counter() - started)
            medians = {k: float(np.median(v)) for k, v in timings.items()}
            rows.append((size, build, load, stored, medians, {k: float(np.max(v)) for k, v in timings.items()}))
            print(
                f"{size} sources: bank {build:.2f} s (load {load:.3f} s, {stored / 1e6:.1f} MB); "
                + ", ".join(f"{k} median {v * 1000:.0f} ms" for k, v in medians.items()),
                flush=True,
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    views = len(ViewGrid())
    body = [
        "## Image-fit latency against library size",
        "",
        f"Command: `python bench/bench_image.py --sizes {' '.join(map(str, args.sizes))} --targets {args.targets}` "
        f"({machine()}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; the machine was shared).",
        f"Library: {args.base} generated, indexed models grown synthetically to each size (as bench_fit.py). "
        f"Silhouettes: every source from {views} views, 32 x 32, built once and kept bit-packed in the index folder. "
        "Each fit: a 256 x 256 render on white; `match_image` is the silhouette ranking and proportions alone, "
        "`Fitter.fit_image` the whole call.",
        "",
        "| sources | silhouettes built once | loaded | stored | match_image median (max) | fit_image median (max) |",
        "|---|---|---|---|---|---|",
    ]
    for size, build, load, stored, medians, worst in rows:
        body.append(
            f"| {size:,} | {build:.2f} s | {load * 1000:.0f} ms | {stored / 1e6:.1f} MB | "
            f"{medians['match_image'] * 1000:.0f} ms ({worst['match_image'] * 1000:.0f}) | "
            f"{medians['Fitter.fit_image'] * 1000:.0f} ms ({worst['Fitter.fit_image'] * 1000:.0f}) |"
        )
    print("\n".join(body))
    if args.write:
        write_section("image", "\n".join(body))


if __name__ == "__main__":
    main()
