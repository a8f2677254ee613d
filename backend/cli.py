"""Command line: ``python -m backend index|info ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from typing import Sequence

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
    print(f"index {info['index']} of {info['library_root']} ({len(info['sources'])} sources, {len(info['skipped'])} skipped)")
    for s in info["sources"]:
        sym = " symmetric" if s["symmetric"] else ""
        print(f"  {s['path']}: {s['n_parts']} parts, {s['n_joints']} joints, {s['n_pieces']} pieces{sym}")
    for s in info["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Retrieve-and-fit backend.")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="index (or update the index of) a folder of models")
    index.add_argument("library", help="folder of .obj .glb .gltf .ply .stl .off files and PartNet shapes")
    index.add_argument("--out", required=True, help="index folder (created or updated)")
    index.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="worker processes")
    index.add_argument("--max-parts", dest="max_parts", type=int, help="cap on parts per model (default 16)")
    index.add_argument("--min-part-fraction", dest="min_part_fraction", type=float, help="merge pieces smaller than this fraction of the model (default 0.04)")
    index.add_argument("--contact-tolerance", dest="contact_tolerance", type=float, help="contact distance as a fraction of the model's diagonal (default 0.01)")
    index.add_argument("--samples", dest="n_samples", type=int, help="surface samples per model (default 2048)")
    index.add_argument("--up-axis", dest="up_axis", choices=UP_AXES, help="up axis of the files (default: auto, per format)")
    index.add_argument("--json", action="store_true", help="print the run's report as JSON")
    index.add_argument("--quiet", action="store_true", help="no progress bar")
    index.set_defaults(run=_cmd_index)

    info = commands.add_parser("info", help="what an index holds")
    info.add_argument("index", help="index folder")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(run=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (LibraryIndexError, NotADirectoryError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
