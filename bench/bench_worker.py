"""A default fit's round trip through the worker, against the fitter's own time.

    python bench/bench_worker.py [--sizes 100 1000] [--repeats 3] [--write]

Builds a library of generated furniture (``--sizes`` sources; beyond the first 100 the index
repeats those sources under new names, hard links to the same files: the fitter and the worker
treat every row as its own source), starts ``python -m backend serve`` through the add-on's own
client and sends the add-on's fit request (default options, the best candidate's part meshes,
96-pixel thumbnails of every candidate, drawn at index time and read from the index). Reports the
first round trip (model and library codes load) and the mean of the next ones, beside the fit's
own time (``FitResult.seconds``, measured inside the worker) and a plain ``Fitter.fit_points``
call in this process. The difference is the worker's share: framing, part meshes, thumbnails,
per-part residuals (``backend.residuals``). Prints its docs/benchmarks.md section (and writes it
with ``--write``).
"""

from __future__ import annotations

import argparse
import json
import os
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

from backend import DEFAULT_CHECKPOINT  # noqa: E402
from backend.library import build_index  # noqa: E402
from blender_addon.client import BackendClient  # noqa: E402
from training.data.export import write_glb  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402

BASE = 100


def build_library(work: Path) -> Path:
    for i in range(BASE):
        write_glb(generate(CATEGORIES[i % 3], 7, i // 3), work / "library" / f"{i:04d}.glb")
    build_index(work / "library", work / "index-100", jobs=2)
    return work / "index-100"


def grown_index(work: Path, base: Path, size: int) -> Path:
    """An index of ``size`` rows: the base sources repeated under new names (hard-linked files)."""
    if size == BASE:
        return base
    manifest = json.loads((base / "manifest.json").read_text())
    rows = manifest["sources"]
    grown = []
    for k in range(size):
        row = dict(rows[k % len(rows)])
        if k >= len(rows):
            name = f"copy{k:05d}-{Path(row['path']).name}"
            if not (work / "library" / name).exists():  # an earlier, smaller size made it already
                os.link(work / "library" / row["path"], work / "library" / name)
            stat = (work / "library" / name).stat()
            row.update(path=name, size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        grown.append(row)
    folder = work / f"index-{size}"
    shutil.copytree(base / "sources", folder / "sources")
    (folder / "manifest.json").write_text(json.dumps({**manifest, "sources": grown}))
    return folder


def target_points() -> np.ndarray:
    """A held-out chair (another data-set seed), 2,048 surface samples."""
    shape = generate("chair", 1234, 0)
    import trimesh

    mesh = trimesh.util.concatenate(list(shape.parts.values()))
    return np.asarray(trimesh.sample.sample_surface(mesh, 2048, seed=0)[0], np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rfit-bench-worker-"))
    points = target_points()
    rows = []
    try:
        base = build_library(work)
        client = BackendClient(sys.executable)
        from backend.fitting import Fitter

        for size in args.sizes:
            index = grown_index(work, base, size)
            request = dict(index=str(index), checkpoint=str(DEFAULT_CHECKPOINT), options={}, meshes_for=[0])
            trips, inside = [], []
            for _ in range(1 + args.repeats):
                started = time.perf_counter()
                answer = client.call("fit", {"points": points}, timeout=1800, thumbnails=96, **request)
                trips.append(time.perf_counter() - started)
                inside.append(answer["seconds"])
            fitter = Fitter.open(DEFAULT_CHECKPOINT, index)
            direct = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                fitter.fit_points(points)
                direct.append(time.perf_counter() - started)
            row = (size, trips[0], np.mean(trips[1:]), np.mean(inside[1:]), np.mean(direct))
            rows.append(row)
            print(
                f"{size} sources: first round trip {row[1]:.2f} s; then {row[2]:.2f} s a round trip, "
                f"{row[3]:.2f} s of it the fit; Fitter.fit_points in-process {row[4]:.2f} s"
            )
        client.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = [
        "## Worker round trip",
        "",
        f"Command: `python bench/bench_worker.py --sizes {' '.join(map(str, args.sizes))} --repeats {args.repeats}` "
        f"({machine()}, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads in the worker).",
        "The add-on's fit request (default options, part meshes of the best candidate, the 96-pixel thumbnails "
        "of every candidate that indexing drew, per-part residuals) through `python -m backend serve`, default "
        "checkpoint, a held-out generated chair "
        "(2,048 points); generated furniture as the library (beyond 100 sources, the same 100 under new names).",
        "",
        "| sources | first round trip (loads model and codes) | round trip | fit inside the worker "
        "| worker's share | `Fitter.fit_points` in-process |",
        "|---|---|---|---|---|---|",
    ]
    body += [
        f"| {size} | {first:.2f} s | {trip:.2f} s | {fit:.2f} s | {trip - fit:.2f} s | {direct:.2f} s |"
        for size, first, trip, fit, direct in rows
    ]
    body += [
        "",
        "The worker keeps fitters per (checkpoint, index) and the part meshes and colours of the last 32 sources "
        "(backend/export.py), so after the first request nothing is parsed again; thumbnails are drawn once, at "
        "index time (backend/library/index.py), and read from the source files.",
    ]
    text = "\n".join(body)
    print(text)
    if args.write:
        write_section("worker", text)


if __name__ == "__main__":
    main()
