"""Command line: ``python -m backend index|info|fit|serve ...``.

- ``index LIBRARY --out INDEX``: create or update a library's index (``--rebuild`` starts over,
  ``--relocate`` re-points an index at a library that moved);
- ``info INDEX``: what an index holds;
- ``fit --index INDEX --points FILE | --image FILE``: retrieve and deform sources to a target;
- ``serve``: the worker the Blender add-on talks to (``backend.worker``).

Every input error ends in one line ``error: ...`` naming the file and the problem, with exit
status 2, before any long work starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from backend import DEFAULT_CHECKPOINT
from backend.inputs import InputError, read_image, read_points
from backend.library import IndexOptions, LibraryIndexError, build_index, load_index
from backend.library.loading import UP_AXES
from backend.library.source import OPTION_BOUNDS

TOP_K = (1, 100)
YAW_SEARCH = (1, 36)
JOBS = (1, 64)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str):
        print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _number_in(low: float, high: float, integer: bool):
    kind = "an integer" if integer else "a number"

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind} from {low} to {high}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be {kind} from {low} to {high}, got {text!r}")
        return value

    parse.__name__ = "integer" if integer else "number"
    return parse


def _option_type(name: str):
    low, high = OPTION_BOUNDS[name]
    return _number_in(low, high, isinstance(IndexOptions.__dataclass_fields__[name].default, int))


def _shown(path: str) -> str:
    """A path as text that any terminal can print (file names need not be UTF-8)."""
    return os.fsencode(path).decode("utf-8", "replace")


def _progress_bar(enabled: bool):
    """A ``progress(done, total, path)`` callback drawing tqdm on a terminal, or None."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="model", file=sys.stderr, dynamic_ncols=True)

    def update(done: int, total: int, path: str) -> None:
        bar.total = total
        bar.set_postfix_str(_shown(path)[-40:], refresh=False)
        bar.update(done - bar.n)

    return update, bar.close


def check_checkpoint(path: str) -> None:
    """Refuse a checkpoint that is missing, a folder, not a PyTorch file, or not plain weights.

    Raises:
        ValueError: with the file and the problem.
    """
    if not os.path.exists(path):
        raise ValueError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} is not a file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not a PyTorch checkpoint (not a zip archive)")
    import pickle

    from backend.model.checkpoint import load_checkpoint

    try:
        load_checkpoint(path, "cpu")
    except pickle.UnpicklingError as error:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise ValueError(
            f"checkpoint {path} holds objects other than plain weights"
            + (f" ({named.group(1)})" if named else "")
            + "; it was not loaded"
        ) from error
    except (RuntimeError, KeyError, EOFError, OSError, TypeError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"checkpoint {path} is not a checkpoint of this backend ({type(error).__name__}: {error})"
        ) from error


def check_writable(path: str, what: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse an output path that cannot be written, before the work that would fill it.

    Raises:
        ValueError: a folder, a wrong suffix, or a path that cannot be opened for writing.
    """
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; give a file name")
    if suffixes and Path(path).suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path} must end with {' or '.join(suffixes)}")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):  # appending nothing changes nothing in an existing file
            pass
    except OSError as error:
        raise ValueError(f"cannot write {what} {path}: {error.strerror or error}") from error
    if not existed:
        os.unlink(path)  # the empty file this check made


def check_device(device: str | None) -> str | None:
    """``None`` (automatic), ``cpu`` or an available CUDA device.

    Raises:
        ValueError: an unknown device, or CUDA without a usable GPU.
    """
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"--device {device}: not a device (use cpu or cuda)") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available here (torch {torch.__version__}); use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device}: use cpu or cuda")
    return device


def _cmd_index(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name) for f in fields(IndexOptions) if getattr(args, f.name, None) is not None}
    options = None
    if overrides:
        try:
            existing = load_index(args.out).options
        except LibraryIndexError:
            existing = IndexOptions()
        options = IndexOptions(**{**existing.to_json(), **overrides})
    if args.encode:
        check_checkpoint(args.encode)
    show = not args.quiet and sys.stderr.isatty()
    progress, close = _progress_bar(show)
    try:
        report = build_index(
            args.library,
            args.out,
            options=options,
            jobs=args.jobs,
            progress=progress,
            rebuild=args.rebuild,
            relocate=args.relocate,
        )
    finally:
        close()
    if args.encode and len(load_index(args.out)):
        from backend.fitting import Fitter

        Fitter.open(args.encode, args.out)  # computes and caches the library's codes
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(f"indexed {_shown(args.library)} -> {_shown(args.out)}: {report.summary()}")
        for s in report.skipped:
            print(f"  skipped {_shown(s.path)}: {s.reason}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    info = load_index(args.index).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(
        f"index {_shown(info['index'])} of {_shown(info['library_root'])} "
        f"({len(info['sources'])} sources, {len(info['skipped'])} skipped)"
    )
    for s in info["sources"]:
        sym = " symmetric" if s["symmetric"] else ""
        print(f"  {_shown(s['path'])}: {s['n_parts']} parts, {s['n_joints']} joints, {s['n_pieces']} pieces{sym}")
    for s in info["skipped"]:
        print(f"  skipped {_shown(s['path'])}: {s['reason']}")
    return 0


def _finite(data) -> bool:
    if isinstance(data, float):
        return math.isfinite(data)
    if isinstance(data, dict):
        return all(_finite(v) for v in data.values())
    if isinstance(data, list | tuple):
        return all(_finite(v) for v in data)
    return True


def viewpoint_option(values: list[str]) -> str | tuple[float, float, float] | None:
    """``--viewpoint``: ``auto`` (estimate from the scan whether it is single-view, and from where),
    ``none`` (a cloud from all around) or X Y Z (the direction from the object towards the scanner).

    Raises:
        ValueError: anything else, in one line saying what is accepted.
    """
    if len(values) == 1 and values[0].lower() in ("auto", "none"):
        return "auto" if values[0].lower() == "auto" else None
    accepted = "--viewpoint takes auto, none, or three numbers X Y Z (the direction towards the scanner)"
    if len(values) != 3:
        raise ValueError(f"{accepted}; got {' '.join(values)!r}")
    try:
        direction = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"{accepted}; got {' '.join(values)!r}") from None
    if not all(math.isfinite(v) and abs(v) <= 1e6 for v in direction):
        raise ValueError(f"{accepted} (finite, at most 1e6); got {' '.join(values)!r}")
    if not any(direction):
        raise ValueError("--viewpoint 0 0 0 has no direction: give the direction from the object towards the scanner")
    return direction


def _cmd_fit(args: argparse.Namespace) -> int:
    # Everything that can be checked is checked before the model or the library's codes load.
    index = load_index(args.index)
    if len(index) == 0:
        raise ValueError(f"the index {args.index} holds no sources; index a library with models first")
    check_checkpoint(args.checkpoint)
    target = read_points(args.points) if args.points else read_image(args.image)
    if args.out:
        check_writable(args.out, "--out")
    if args.export:
        check_writable(args.export, "--export", (".glb",))
        index.check_library()  # the export reads the source's file
    device = check_device(args.device)

    from backend.export import export_fit
    from backend.fitting import FitOptions, Fitter

    viewpoint = {} if args.viewpoint is None else {"viewpoint": viewpoint_option(args.viewpoint)}
    options = FitOptions(
        top_k=args.top_k,
        refine=args.refine,
        yaw_search=args.yaw_search,
        headings="fixed" if args.fixed_heading else "auto",
        **viewpoint,  # not given: FitOptions' default
    )
    fitter = Fitter.open(args.checkpoint, args.index, device=device)
    result = fitter.fit_points(target, options) if args.points else fitter.fit_image(target, options)
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    data = result.to_json()
    if not _finite(data):
        raise ValueError("the fit produced non-finite numbers (NaN or infinity); nothing was written")
    if args.out:
        text = json.dumps(data, indent=1, allow_nan=False)
        with open(args.out, "w") as handle:
            handle.write(text)
    if args.export:
        export_fit(fitter.index, result.candidates[0], args.export)
    for c in result.candidates:
        measured = "" if c.measured_chamfer is None else f", chamfer {c.measured_chamfer * 100:.3f} x1e-2"
        print(f"{c.rank + 1}. {_shown(c.source_path)} ({len(c.fitted_boxes)} parts{measured})")
    print(
        f"fitted in {result.seconds:.2f} s"
        + (f"; wrote {args.out}" if args.out else "")
        + (f" and {args.export}" if args.export else "")
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from backend.worker import serve

    return serve()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m backend", description="Retrieve-and-fit backend.")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="index (or update the index of) a folder of models")
    index.add_argument("library", help="folder of .obj .glb .gltf .ply .stl .off files and PartNet shapes")
    index.add_argument("--out", required=True, help="index folder (new, empty, or an index of this library)")
    index.add_argument(
        "--jobs",
        type=_number_in(*JOBS, integer=True),
        default=max(1, min(4, os.cpu_count() or 1)),
        help="worker processes",
    )
    index.add_argument(
        "--max-parts", dest="max_parts", type=_option_type("max_parts"), help="cap on parts per model (default 16)"
    )
    index.add_argument(
        "--min-part-fraction",
        dest="min_part_fraction",
        type=_option_type("min_part_fraction"),
        help="merge pieces smaller than this fraction of the model (default 0.04)",
    )
    index.add_argument(
        "--contact-tolerance",
        dest="contact_tolerance",
        type=_option_type("contact_tolerance"),
        help="contact distance as a fraction of the model's diagonal (default 0.01)",
    )
    index.add_argument(
        "--samples", dest="n_samples", type=_option_type("n_samples"), help="surface samples per model (default 2048)"
    )
    index.add_argument(
        "--up-axis", dest="up_axis", choices=UP_AXES, help="up axis of the files (default: auto, per format)"
    )
    index.add_argument("--rebuild", action="store_true", help="start over: rebuild every source (repairs any damage)")
    index.add_argument(
        "--relocate",
        action="store_true",
        help="the library moved: re-point an index of another folder at LIBRARY (automatic when the old one is gone)",
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
    target.add_argument("--image", help="reference image (.png, .jpg): an object on a plain background")
    fit.add_argument("--top-k", dest="top_k", type=_number_in(*TOP_K, integer=True), default=5, help="1 to 100")
    fit.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="inner deformation optimisation of point-cloud fits (default: on; --no-refine skips it)",
    )
    fit.add_argument(
        "--fixed-heading",
        action="store_true",
        help="trust the cloud's heading (only the --yaw-search turns); default: also those its footprint suggests",
    )
    fit.add_argument(
        "--yaw-search",
        dest="yaw_search",
        type=_number_in(*YAW_SEARCH, integer=True),
        default=1,
        help="try this many turns about the up axis (1 to 36)",
    )
    fit.add_argument(
        "--viewpoint",
        nargs="+",
        metavar="auto|none|X Y Z",
        help="a single-view scan's scanner: auto (estimated from the scan), none (a cloud from all around), or the "
        "direction X Y Z from the object towards the scanner (it fits the seen side only)",
    )
    fit.add_argument("--out", help="write the ranked candidates as JSON")
    fit.add_argument("--export", help="write the best fit as .glb (one node per part)")
    fit.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    fit.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    fit.set_defaults(run=_cmd_fit)

    serve = commands.add_parser(
        "serve", help="run the worker the Blender add-on talks to (framed protocol on stdin/stdout)"
    )
    serve.set_defaults(run=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (LibraryIndexError, NotADirectoryError, ValueError, FileNotFoundError, InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
