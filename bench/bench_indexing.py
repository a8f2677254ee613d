"""Indexing throughput: meshes per second for ~5k-triangle part-structured meshes.

    python bench/bench_indexing.py [--meshes 120]

Writes its section of docs/benchmarks.md. Target: at least 20 meshes/s on
the 2-core development machine (the authors' preprocessing takes ~4 s a shape).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, write_section  # noqa: E402

from backend.library import build_index  # noqa: E402
from training.data.export import write_glb  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402


def dense_shape(category: str, index: int):
    """A generated shape whose coarsest parts are subdivided until it has about 5k triangles."""
    shape = generate(category, 99, index)
    while sum(len(m.faces) for m in shape.parts.values()) < 4500:
        largest = max(shape.parts, key=lambda name: shape.parts[name].area / len(shape.parts[name].faces))
        shape.parts[largest] = shape.parts[largest].subdivide()
    return shape


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meshes", type=int, default=120)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rfit-bench-"))
    try:
        faces = []
        for i in range(args.meshes):
            shape = dense_shape(CATEGORIES[i % 3], i // 3)
            faces.append(sum(len(m.faces) for m in shape.parts.values()))
            write_glb(shape, work / "library" / f"{i:04d}.glb")
        rows = []
        for jobs in (1, 2):
            index = work / f"index{jobs}"
            started = time.perf_counter()
            report = build_index(work / "library", index, jobs=jobs)
            seconds = time.perf_counter() - started
            assert len(report.added) == args.meshes, report.summary()
            started = time.perf_counter()
            build_index(work / "library", index, jobs=jobs)
            rerun = time.perf_counter() - started
            rows.append((jobs, args.meshes / seconds, seconds, rerun))
            print(
                f"jobs={jobs}: {args.meshes / seconds:.1f} meshes/s ({seconds:.2f} s), unchanged re-run {rerun:.2f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = [
        "## Library indexing throughput",
        "",
        f"Command: `python bench/bench_indexing.py --meshes {args.meshes}` ({machine()}).",
        f"Meshes: generated furniture (.glb, one node per part), subdivided to {int(np.mean(faces))} triangles "
        f"on average ({min(faces)}-{max(faces)}); full pipeline per mesh: read, segment, contacts, constraints, "
        "symmetry, samples, write.",
        "",
        "| worker processes | meshes/s | wall time | re-run with nothing changed |",
        "|---|---|---|---|",
    ]
    body += [f"| {jobs} | {rate:.1f} | {seconds:.2f} s | {rerun:.2f} s |" for jobs, rate, seconds, rerun in rows]
    body += [
        "",
        "Target: at least 20 meshes/s on this 2-core machine (the authors' preprocessing: about 4 s per shape).",
    ]
    write_section("indexing", "\n".join(body))


if __name__ == "__main__":
    main()
