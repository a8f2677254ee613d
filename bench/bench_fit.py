"""Retrieve-and-fit latency for a library of 1,000 sources, with and without refinement.

    python bench/bench_fit.py [--sources 1000] [--checkpoint backend/checkpoints/default.pt]

Writes its section of docs/benchmarks.md. Targets: under 100 ms without IDO,
under 2 s with IDO, on the 2-core development machine. The library's codes
are computed once and cached in the index (not part of a fit's latency).
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

from report import machine, write_section  # noqa: E402

from backend.fitting import DEFAULT_CHECKPOINT, FitOptions, Fitter  # noqa: E402
from backend.library import build_index  # noqa: E402
from backend.model.checkpoint import save_checkpoint  # noqa: E402
from backend.model.networks import JointModel  # noqa: E402
from training.data.export import write_glb  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402
from training.data.views import full_cloud, render_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", help="keep the library and index here (reused when present)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rfit-fit-"))
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        checkpoint = work / "untrained.pt"
        save_checkpoint(checkpoint, JointModel())
    try:
        library = work / "library"
        if not library.exists():
            for i in range(args.sources):
                write_glb(generate(CATEGORIES[i % 3], 4242, i // 3), library / f"{i:04d}.glb")
        build_index(library, work / "index", jobs=2)
        started = time.perf_counter()
        fitter = Fitter.open(checkpoint, work / "index", device="cpu")
        warm = time.perf_counter() - started
        rng = np.random.default_rng(0)
        shapes = [generate(CATEGORIES[i % 3], 777, i) for i in range(args.targets)]
        clouds = [full_cloud(s, 4096, rng, noise=0.002) for s in shapes]
        images = [render_image(s, rng, size=128) for s in shapes]
        fitter.fit_points(clouds[0])  # warm-up
        rows = []
        for label, run in (
            ("point cloud, no refinement", lambda i: fitter.fit_points(clouds[i], FitOptions(top_k=5))),
            (
                "point cloud, with refinement (IDO)",
                lambda i: fitter.fit_points(clouds[i], FitOptions(top_k=5, refine=True)),
            ),
            ("image", lambda i: fitter.fit_image(images[i], FitOptions(top_k=5))),
        ):
            times = []
            for i in range(args.targets):
                t = time.perf_counter()
                run(i)
                times.append(time.perf_counter() - t)
            rows.append((label, 1000 * np.median(times), 1000 * np.max(times)))
            print(f"{label}: median {rows[-1][1]:.0f} ms, max {rows[-1][2]:.0f} ms")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    body = [
        "## Retrieve-and-fit latency",
        "",
        f"Command: `python bench/bench_fit.py --sources {args.sources} --targets {args.targets}` ({machine()}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads).",
        f"Library: {args.sources} generated sources; checkpoint `{Path(args.checkpoint).name if Path(args.checkpoint).exists() else 'untrained, default size'}`. "
        f"Opening the fitter (loading the index and encoding the library once, then cached in the index): {warm:.1f} s.",
        "Each fit: embed the target, rank all sources, deform the 20 nearest and re-rank them by measured chamfer (points), return the top 5.",
        "",
        "| target | median | max |",
        "|---|---|---|",
    ]
    body += [f"| {label} | {median:.0f} ms | {worst:.0f} ms |" for label, median, worst in rows]
    body += ["", "Targets: under 100 ms without refinement, under 2 s with it."]
    write_section("fit", "\n".join(body))


if __name__ == "__main__":
    main()
