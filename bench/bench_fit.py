"""Retrieve-and-fit latency against library size (100, 1,000, 10,000 sources), CPU.

    python bench/bench_fit.py [--sizes 100 1000 10000] [--targets 5] [--scans] [--no-write]
        [--checkpoint backend/checkpoints/default.pt]

A real library of ``--base`` generated models is indexed once; larger libraries are made from it
synthetically (each copy of a source scaled per axis by a random factor in [0.8, 1.25], so no two
are alike), which is what the fit's cost depends on: tensors of that many sources, not files. Each
row is the median over ``--targets`` full clouds of ``Fitter.fit_points`` at default options
(every source placed and ranked at every candidate heading, the best refined), and with
``--no-refine``; ``--scans`` adds single-view scans of the same targets, at default options (the viewpoint
estimated: a second ranking when the cloud is judged a scan) and told ``viewpoint=None`` (the estimate's cost is
the difference). Writes its section of docs/benchmarks.md unless ``--no-write``.
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
from backend.model.inference import SHORTLIST_THRESHOLD  # noqa: E402
from backend.model.placement import source_extent  # noqa: E402
from backend.model.sources import SourceTensors  # noqa: E402
from training.data.export import write_glb  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402
from training.data.views import full_cloud, partial_cloud  # noqa: E402


def grown(fitter: Fitter, size: int, seed: int = 0) -> Fitter:
    """A copy of ``fitter`` whose library holds ``size`` sources: its own, then per-axis scaled copies."""
    base = len(fitter.sources)
    rows = torch.arange(size) % base
    generator = torch.Generator().manual_seed(seed)
    factor = torch.exp(torch.empty(size, 1, 3).uniform_(np.log(0.8), np.log(1.25), generator=generator))
    factor[:base] = 1.0
    sources = fitter.sources.select(rows)
    values = {f: getattr(sources, f) for f in SourceTensors.__dataclass_fields__}
    diagonal = (source_extent(sources) * factor.squeeze(1)).norm(dim=-1)  # each copy back to a unit diagonal
    scale = (factor / diagonal.view(-1, 1, 1)).to(sources.points)
    values["points"] = sources.points * scale
    values["boxes"] = torch.cat([sources.boxes[..., :3] * scale, sources.boxes[..., 3:] * scale], dim=-1)
    copy = object.__new__(Fitter)
    copy.__dict__.update(fitter.__dict__)
    copy.sources = SourceTensors(**values)
    copy.codes = {k: v[rows] for k, v in fitter.codes.items()}
    copy.index = object.__new__(type(fitter.index))
    copy.index.__dict__.update(fitter.index.__dict__)
    copy.index.sources = [fitter.index.sources[int(r)] for r in rows]
    return copy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--base", type=int, default=60, help="real generated models indexed")
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--work", help="keep the library and index here (reused when present)")
    parser.add_argument("--scans", action="store_true", help="also time single-view scans of the targets")
    parser.add_argument("--no-write", action="store_true", help="print the rows only (docs/benchmarks.md untouched)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rfit-fit-"))
    try:
        library = work / "library"
        if not library.exists():
            for i in range(args.base):
                write_glb(generate(CATEGORIES[i % 3], 4242, i // 3), library / f"{i:04d}.glb")
        build_index(library, work / "index", jobs=2)
        fitter = Fitter.open(args.checkpoint, work / "index", device="cpu")
        rng = np.random.default_rng(0)
        shapes = [generate(CATEGORIES[i % 3], 777, i) for i in range(args.targets)]
        clouds = [full_cloud(shape, 4096, rng, noise=0.002) for shape in shapes]
        scans = [partial_cloud(shape, 4096, rng, noise=0.002) for shape in shapes] if args.scans else []
        fitter.fit_points(clouds[0])  # warm-up
        runs = [("default", FitOptions(), clouds), ("--no-refine", FitOptions(refine=False), clouds)]
        if scans:
            runs.append(("scan, default", FitOptions(), scans))
            runs.append(("scan, viewpoint None", FitOptions(viewpoint=None), scans))
        rows = []
        for size in args.sizes:
            sized = grown(fitter, size)
            for label, options, targets in runs:
                times = []
                for cloud in targets:
                    started = time.perf_counter()
                    sized.fit_points(cloud, options)
                    times.append(time.perf_counter() - started)
                rows.append((size, label, np.median(times), np.max(times)))
                print(f"{size} sources, {label}: median {rows[-1][2]:.2f} s, max {rows[-1][3]:.2f} s", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    body = [
        "## Retrieve-and-fit latency against library size",
        "",
        f"Command: `python bench/bench_fit.py --sizes {' '.join(map(str, args.sizes))} --targets {args.targets}"
        f"{' --scans' if args.scans else ''}` "
        f"({machine()}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; the machine was shared).",
        f"Library: {args.base} generated, indexed models, grown synthetically (per-axis scaled copies) to each size; "
        f"checkpoint `{Path(args.checkpoint).name}`. Each fit: full cloud of 4,096 points, `Fitter.fit_points` (the "
        "worker adds thumbnails and part meshes, see the worker section); a scan: 4,096 points of one view "
        f"(`training.data.views.partial_cloud`). Above {SHORTLIST_THRESHOLD} sources the "
        "retrieval embedding shortlists that many before the geometric ranking.",
        "",
        "| sources | options | median | max |",
        "|---|---|---|---|",
    ]
    body += [f"| {size:,} | {label} | {median:.2f} s | {worst:.2f} s |" for size, label, median, worst in rows]
    if args.no_write:
        print("\n".join(body))
    else:
        write_section("fit", "\n".join(body))


if __name__ == "__main__":
    main()
