"""Command line: ``python -m backend index|info ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from backend import DEFAULT_CHECKPOINT
from backend.library import IndexOptions, LibraryIndexError, build_index, load_index
from backend.library.loading import UP_AXES


def _progress_bar(enabled: bool):
    """A ``progress(done, total, path)`` callback drawing tqdm on a terminal, or None."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="model", file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int, path: str) -> None:
        bar.total = total
        bar.set_postfix_str(path[-40:], refresh=False)
        bar.update(done - bar.n)

    return update, bar.close


def _cmd_index(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in fields(IndexOptions) if getattr(args, f.name, None) is not None}
    options = None
    if overrides:
        try:
            existing = load_index(args.out).options
        except LibraryIndexError:
            existing = IndexOptions()
        options = IndexOptions(**{**existing.to_json(), **overrides})
    show = not args.quiet and sys.stderr.isatty()
    progress, close = _progress_bar(show)
    try:
        report = build_index(args.library, args.out, options=options, jobs=args.jobs, progress=progress)
    finally:
        close()
    if args.encode:
        from backend.fitting import Fitter

        if len(load_index(args.out)):
            Fitter.open(args.encode, args.out)  # computes and caches the library's codes
    if args.json:
        print(json.dumps({**report.__dict__, "skipped": [s.__dict__ for s in report.skipped]}, indent=1))
    else:
        print(f"indexed {args.library} -> {args.out}: {report.summary()}")
        for s in report.skipped:
            print(f"  skipped {s.path}: {s.reason}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = load_index(args.index).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(
        f"index {info['index']} of {info['library_root']} ({len(info['sources'])} sources, {len(info['skipped'])} skipped)"
    )
    for s in info["sources"]:
        sym = " symmetric" if s["symmetric"] else ""
        print(f"  {s['path']}: {s['n_parts']} parts, {s['n_joints']} joints, {s['n_pieces']} pieces{sym}")
    for s in info["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    return 0


def read_points(path: str):
    """An (N, 3) array from .npy (no pickle), .ply/.obj/.off vertices, or whitespace text (.xyz, .txt)."""
    import numpy as np

    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix in (".ply", ".obj", ".off", ".stl", ".glb", ".gltf"):
        import trimesh

        loaded = trimesh.load(path, process=False)
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.to_geometry()
        return np.asarray(loaded.vertices)
    return np.loadtxt(path, ndmin=2)[:, :3]


def read_image(path: str):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def _cmd_fit(args: argparse.Namespace) -> int:
    from backend.export import export_fit
    from backend.fitting import FitOptions, Fitter

    if not os.path.exists(args.checkpoint):
        raise ValueError(f"checkpoint not found: {args.checkpoint}")
    options = FitOptions(top_k=args.top_k, refine=args.refine, yaw_search=args.yaw_search)
    fitter = Fitter.open(args.checkpoint, args.index, device=args.device)
    if args.points:
        try:
            points = read_points(args.points)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read points from {args.points}: {error}") from error
        result = fitter.fit_points(points, options)
    else:
        result = fitter.fit_image(read_image(args.image), options)
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    data = result.to_json()
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(data, handle, indent=1)
    if args.export:
        export_fit(fitter.index, result.candidates[0], args.export)
    for c in result.candidates:
        measured = "" if c.measured_chamfer is None else f", chamfer {c.measured_chamfer * 100:.3f} x1e-2"
        print(f"{c.rank + 1}. {c.source_path} ({len(c.fitted_boxes)} parts{measured})")
    print(
        f"fitted in {result.seconds:.2f} s"
        + (f"; wrote {args.out}" if args.out else "")
        + (f" and {args.export}" if args.export else "")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Retrieve-and-fit backend.")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="index (or update the index of) a folder of models")
    index.add_argument("library", help="folder of .obj .glb .gltf .ply .stl .off files and PartNet shapes")
    index.add_argument("--out", required=True, help="index folder (created or updated)")
    index.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="worker processes")
    index.add_argument("--max-parts", dest="max_parts", type=int, help="cap on parts per model (default 16)")
    index.add_argument(
        "--min-part-fraction",
        dest="min_part_fraction",
        type=float,
        help="merge pieces smaller than this fraction of the model (default 0.04)",
    )
    index.add_argument(
        "--contact-tolerance",
        dest="contact_tolerance",
        type=float,
        help="contact distance as a fraction of the model's diagonal (default 0.01)",
    )
    index.add_argument("--samples", dest="n_samples", type=int, help="surface samples per model (default 2048)")
    index.add_argument(
        "--up-axis", dest="up_axis", choices=UP_AXES, help="up axis of the files (default: auto, per format)"
    )
    index.add_argument(
        "--encode", metavar="CHECKPOINT", help="also encode the library with this model now, so the first fit is fast"
    )
    index.add_argument("--json", action="store_true", help="print the run's report as JSON")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(run=_cmd_index)

    info = commands.add_parser("info", help="what an index holds")
    info.add_argument("index", help="index folder")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(run=_cmd_info)

    fit = commands.add_parser("fit", help="retrieve sources for a target and deform them to it")
    fit.add_argument("--index", required=True, help="index folder (python -m backend index)")
    target = fit.add_mutually_exclusive_group(required=True)
    target.add_argument("--points", help="point cloud: .npy (N x 3), .ply, .xyz; Z-up world coordinates")
    target.add_argument("--image", help="reference image (.png, .jpg)")
    fit.add_argument("--top-k", dest="top_k", type=int, default=5)
    fit.add_argument("--refine", action="store_true", help="inner deformation optimisation (point clouds)")
    fit.add_argument(
        "--yaw-search", dest="yaw_search", type=int, default=1, help="try this many turns about the up axis"
    )
    fit.add_argument("--out", help="write the ranked candidates as JSON")
    fit.add_argument("--export", help="write the best fit as .glb (one node per part)")
    fit.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    fit.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    fit.set_defaults(run=_cmd_fit)

    serve = commands.add_parser(
        "serve", help="run the worker the Blender add-on talks to (framed protocol on stdin/stdout)"
    )
    serve.set_defaults(run=lambda args: __import__("backend.worker", fromlist=["serve"]).serve())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (LibraryIndexError, NotADirectoryError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
