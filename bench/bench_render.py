"""Rendering throughput of training images (128x128 RGB, 2x supersampled).

    python bench/bench_render.py [--shapes 60]

Writes its section of docs/benchmarks.md. Target: at least 20 images/s on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, write_section  # noqa: E402

from training.data.furniture import CATEGORIES, generate  # noqa: E402
from training.data.views import render_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", type=int, default=60)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    shapes = [generate(CATEGORIES[i % 3], 7, i) for i in range(args.shapes)]
    faces = [sum(len(m.faces) for m in s.parts.values()) for s in shapes]
    rng = np.random.default_rng(0)
    render_image(shapes[0], rng, size=args.size)  # warm-up
    started = time.perf_counter()
    for shape in shapes:
        render_image(shape, rng, size=args.size)
    seconds = time.perf_counter() - started
    rate = len(shapes) / seconds
    print(f"{rate:.1f} images/s")
    body = "\n".join(
        [
            "## Image rendering throughput",
            "",
            f"Command: `python bench/bench_render.py --shapes {args.shapes} --size {args.size}` ({machine()}).",
            f"{args.size}x{args.size} RGB, rasterised at 2x and averaged down, one process; "
            f"generated furniture of {int(np.mean(faces))} triangles on average ({min(faces)}-{max(faces)}), "
            "random viewpoints.",
            "",
            f"Result: **{rate:.1f} images/s** ({seconds / len(shapes) * 1000:.1f} ms per image). "
            "Target: at least 20 images/s.",
        ]
    )
    write_section("render", body)


if __name__ == "__main__":
    main()
