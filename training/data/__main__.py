"""``python -m training.data generate|demo|figures``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.data.dataset import DatasetSpec, write_dataset
from training.data.furniture import CATEGORIES


def _progress(label: str):
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=label, unit="shape", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return update, bar.close


def cmd_generate(args) -> int:
    spec = DatasetSpec(
        per_category=args.per_category,
        seed=args.seed,
        test_fraction=args.test_fraction,
        views=args.views,
        image_size=args.image_size,
        points=args.points,
        categories=tuple(args.categories),
    )
    progress, close = _progress("generate")
    try:
        meta = write_dataset(Path(args.out), spec, jobs=args.jobs, progress=progress)
    finally:
        close()
    n_test = sum(row["split"] == "test" for row in meta["shapes"])
    print(f"wrote {len(meta['shapes'])} shapes ({n_test} test) to {args.out}")
    return 0


def cmd_demo(args) -> int:
    from training.data.demo import write_demo

    written = write_demo(Path(args.out))
    print(f"wrote demo library and targets to {args.out}: {written}")
    return 0


def cmd_figures(args) -> int:
    from training.data.figures import write_figures

    for path in write_figures(Path(args.out), per_category=args.per_category, seed=args.seed):
        print(path)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data", description="Procedural part-structured furniture."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a data set of N shapes per category")
    gen.add_argument("--out", required=True)
    gen.add_argument("--per-category", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--test-fraction", type=float, default=0.2)
    gen.add_argument("--views", type=int, default=0, help="rendered images per shape")
    gen.add_argument("--image-size", type=int, default=128)
    gen.add_argument("--points", type=int, default=0, help="surface samples saved per shape (0: none)")
    gen.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    gen.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    gen.set_defaults(run=cmd_generate)
    demo = commands.add_parser("demo", help="(re)write the embedded demo library and targets")
    demo.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "backend" / "demo"))
    demo.set_defaults(run=cmd_demo)
    fig = commands.add_parser("figures", help="contact sheet and part-count distribution for docs/")
    fig.add_argument("--out", default="docs")
    fig.add_argument("--per-category", type=int, default=500)
    fig.add_argument("--seed", type=int, default=0)
    fig.set_defaults(run=cmd_figures)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
