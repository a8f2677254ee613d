"""Keep Connected latency: one solve after a single-part edit, on 16-part shapes.

    python bench/bench_editing.py [--shapes 12] [--edits 40] [--no-write]

Writes its section of docs/benchmarks.md. Target (issue 16): under 20 ms for 16
parts, so Live mode can solve on every change without freezing the UI.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, write_section  # noqa: E402

from backend.editing import keep_connected  # noqa: E402
from backend.library import IndexOptions, build_source, load_model  # noqa: E402
from training.data.export import write_glb  # noqa: E402
from training.data.furniture import CATEGORIES, generate  # noqa: E402


def sixteen_part_sources(count: int, folder: Path) -> list:
    """Generated shapes that index to 16 parts (the most a source has), all categories."""
    found, index = [], 0
    while len(found) < count and index < 3000:
        category = CATEGORIES[index % 3]
        shape = generate(category, 7, index // 3)
        index += 1
        if shape.n_parts < 15:
            continue
        path = write_glb(shape, folder / f"{category}_{index}.glb")
        source = build_source(load_model(path, folder), IndexOptions(), seed=0)
        if source.n_parts == 16:
            found.append(source)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=int, default=12)
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sources = sixteen_part_sources(args.shapes, Path(tempfile.mkdtemp(prefix="rfit-bench-")))
    rng = np.random.default_rng(0)
    timings = {False: [], True: []}
    joints = []
    for source in sources:
        joints.append(source.n_joints)
        for i in range(args.edits):
            k = int(rng.integers(source.n_parts))
            edited = source.boxes.copy()
            if i % 2:
                edited[k, 3 + int(rng.integers(3))] *= rng.uniform(0.7, 1.4)
            else:
                edited[k, :3] += rng.normal(0, 0.05, 3)
            locked = np.zeros(source.n_parts, bool)
            locked[k] = True
            symmetric = bool((i // 2) % 2)
            started = time.perf_counter()
            keep_connected(
                source.boxes, source.joint_pairs, source.joint_points, edited, locked,
                mirror=source.part_mirror, symmetry_axis=source.symmetry_axis,
                keep_symmetry=symmetric, min_half_size=source.min_half_size,
            )  # fmt: skip
            timings[symmetric].append((time.perf_counter() - started) * 1000)
    lines = []
    for symmetric, values in timings.items():
        v = np.array(values)
        line = (
            f"| {'on' if symmetric else 'off'} | {len(v)} | {np.median(v):.1f} ms | "
            f"{np.quantile(v, 0.9):.1f} ms | {v.max():.1f} ms |"
        )
        print(line)
        lines.append(line)
    body = [
        "## Keep Connected latency (16 parts)",
        "",
        f"Command: `python bench/bench_editing.py --shapes {args.shapes} --edits {args.edits}` ({machine()}).",
        f"{len(sources)} generated shapes of 16 parts ({min(joints)}-{max(joints)} joints); one random single-part "
        "edit (a move, or one axis scaled by 0.7-1.4) per solve, half with symmetry kept.",
        "",
        "| keep symmetry | solves | median | 90th percentile | slowest |",
        "|---|---|---|---|---|",
        *lines,
        "",
        f"Load average while it ran: {os.getloadavg()[0]:.1f} (other jobs share the cores; the median is the number to"
        " trust). Target: under 20 ms (Live mode solves on every change).",
    ]
    if not args.no_write:
        write_section("bench_editing", "\n".join(body))


if __name__ == "__main__":
    main()
