"""Retrieve and fit: the inference API behind ``python -m backend fit`` and the add-on's worker.

    fitter = Fitter.open("backend/checkpoints/default.pt", "INDEX_DIR")
    result = fitter.fit_points(points, FitOptions(top_k=5, refine=True))
    result.candidates[0].fitted_boxes   # (K, 6) in the target's frame, metres

The library's source codes are computed once per checkpoint and cached in
the index folder (``model-<checkpoint id>.npz``); a cache made by another
checkpoint, or before the index changed, is rebuilt rather than mixed in.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend import DEFAULT_CHECKPOINT  # noqa: F401  (re-exported)
from backend.geometry.frames import rotation_z, view_record
from backend.library import load_index
from backend.library.index import LibraryIndex
from backend.model.checkpoint import checkpoint_id, load_checkpoint
from backend.model.inference import embedding_distance, fit_cloud
from backend.model.networks import JointModel
from backend.model.placement import candidate_headings
from backend.model.plausibility import plausibility
from backend.model.sources import SourceTensors, stack_sources
from backend.silhouettes import SilhouetteBank, foreground_mask, match_image

MIN_POINTS = 64
FINE_HEADINGS = 72  # with automatic headings, the pooled sources are also tried every 5 degrees
CACHE_VERSION = 1

Progress = Callable[[int, int, str], None]
"""``progress(done, total, text)``: called between stages of a long call; raising inside it cancels the call."""


def _report(progress: Progress | None, done: int, total: int, text: str) -> None:
    if progress is not None:
        progress(done, total, text)


def _is_code_cache(path: Path) -> bool:
    """Whether a file is a library-codes cache this class wrote: it has the cache's arrays and,
    where it records one, its own name (a renamed copy is the user's)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            named = str(data["name"]) if "name" in keys else path.name
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error):
        return False
    return {"version", "library", "embedding", "sigma"} <= keys and named == path.name


class FitError(ValueError):
    """Input that cannot be fitted; the message says what is wrong."""


@dataclass(frozen=True)
class FitOptions:
    """Knobs of one fit.

    Point targets: every source is placed per axis on the target's box at every candidate
    heading and ranked by a coarse chamfer; the ``rerank_pool`` best get two starts (that placement
    and the network's prediction), are refined and measured, and keep their better start
    (``backend.model.inference.fit_cloud``). Image targets: retrieval in the learned space and
    the network's deformation.

    Attributes:
        top_k: candidates returned.
        refine: run the inner deformation optimisation (point targets only).
        headings: ``"auto"``: also try the headings the cloud's footprint suggests (its
            minimum-area rectangle and principal axes, each with its quarter turns), and
            for the best-placed sources a ring of headings every 5 degrees;
            ``"fixed"``: only the ``yaw_search`` turns.
        yaw_search: try the target turned by this many even angles about Z
            (1: the target's own facing).
        rerank_pool: for point targets, this many of the best-placed sources are refined and measured.
        refine_steps: most optimisation steps (it stops earlier on convergence).
        refine_seconds: safety cap on the optimisation's wall time (not a quality knob).
        symmetry_weight: weight of the symmetry term during refinement.
        size_weight: weight of the part-size plausibility term during refinement
            (``backend.model.plausibility.size_penalty``).
        viewpoint: ``"auto"``: judge from the cloud whether it is a single-view scan and from where
            (``backend.model.viewpoint``; a cloud from all around keeps the full objective); a
            direction (x, y, z) from the object towards the scanner in the cloud's frame: a scan
            seen from there, only the source surface facing it is pulled toward the scan
            (``backend.model.scoring.partial_chamfer``); None: a cloud from all around.
    """

    top_k: int = 5
    refine: bool = True
    headings: str = "auto"
    yaw_search: int = 1
    rerank_pool: int = 5
    refine_steps: int = 150
    refine_seconds: float = 30.0
    symmetry_weight: float = 1.0
    size_weight: float = 0.01
    viewpoint: str | tuple[float, float, float] | None = "auto"


@dataclass
class Candidate:
    """One retrieved and deformed source.

    Boxes are ``[centre, half_size]`` per part, in metres. ``fitted_boxes``
    and ``original_boxes`` (the undeformed source placed on the target) are
    in the target's frame turned by ``yaw`` about Z through ``pivot``: a
    part object at ``pivot + R(yaw) (centre - pivot)`` with rotation ``yaw``
    reproduces the fit. ``source_boxes`` are in the source file's own frame.
    """

    rank: int
    source_index: int
    source_path: str
    retrieval_distance: float
    predicted_chamfer: float
    measured_chamfer: float | None
    source_boxes: np.ndarray
    original_boxes: np.ndarray
    fitted_boxes: np.ndarray
    yaw: float
    pivot: np.ndarray
    scale_factor_p95: float = float("nan")
    share_over_3x: float = float("nan")

    def to_json(self) -> dict:
        return {
            "rank": self.rank,
            "source": self.source_path,
            "source_index": self.source_index,
            "retrieval_distance": self.retrieval_distance,
            "predicted_chamfer_x100": self.predicted_chamfer * 100,
            "measured_chamfer_x100": None if self.measured_chamfer is None else self.measured_chamfer * 100,
            "yaw": self.yaw,
            "pivot": self.pivot.tolist(),
            "plausibility": {"scale_factor_p95": self.scale_factor_p95, "share_over_3x": self.share_over_3x},
            "parts": [
                {"index": k, "source_box": s.tolist(), "original_box": o.tolist(), "fitted_box": f.tolist()}
                for k, (s, o, f) in enumerate(zip(self.source_boxes, self.original_boxes, self.fitted_boxes))
            ],
        }


@dataclass
class FitResult:
    modality: str
    candidates: list[Candidate]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Where the target was seen from (backend.geometry.frames.view_record), or None:
    # {"direction": [x, y, z] unit vector from the object towards the camera or scanner,
    #  "azimuth_deg": atan2(y, x), "elevation_deg": above the XY plane,
    #  "fov_deg": vertical field of view (images) or None, "estimated": bool (False when the caller gave it)}
    view: dict | None = None

    def to_json(self) -> dict:
        return {
            "modality": self.modality,
            "chamfer_units": "squared distances in the normalised frame (box diagonal 1), x100",
            "candidates": [c.to_json() for c in self.candidates],
            "warnings": self.warnings,
            "seconds": self.seconds,
            "view": self.view,
        }


def check_viewpoint(viewpoint) -> None:
    """Raise ``FitError`` unless ``viewpoint`` is ``"auto"``, None or a finite non-zero (3,) direction."""
    if isinstance(viewpoint, str):
        if viewpoint != "auto":
            raise FitError(f"viewpoint must be 'auto', None or a direction (x, y, z), got {viewpoint!r}")
    elif viewpoint is not None:
        view = np.asarray(viewpoint, dtype=np.float64)
        if view.shape != (3,) or not np.all(np.isfinite(view)) or np.linalg.norm(view) < 1e-9:
            raise FitError(f"viewpoint must be three finite numbers, not all zero, got {viewpoint!r}")


def clean_points(points, n_points: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Validate an (N, 3) target and resample it to ``n_points``.

    Rows with NaN or infinite coordinates are dropped (with a warning);
    fewer than ``MIN_POINTS`` usable rows is an error.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise FitError(f"target points must be an N x 3 array, got shape {array.shape}")
    notes = []
    finite = np.all(np.isfinite(array), axis=1)
    if not finite.all():
        if not finite.any():
            raise FitError("every target point has NaN or infinite coordinates")
        notes.append(f"dropped {int((~finite).sum())} of {len(array)} points with NaN or infinite coordinates")
        array = array[finite]
    if len(array) < MIN_POINTS:
        raise FitError(f"the target has {len(array)} usable points; at least {MIN_POINTS} are needed")
    extent = array.max(axis=0) - array.min(axis=0)
    if np.linalg.norm(extent) <= 1e-9:
        raise FitError("every target point is at the same place")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(array), n_points, replace=len(array) < n_points)
    return array[rows], notes


def image_tensor(image, size: int) -> torch.Tensor:
    """(1, 3, size, size) float in [0, 1] from an (H, W, 3|4) uint8 or float array, row 0 at the top.

    Transparent pixels are composited on white (renders and product shots
    with an alpha channel).
    """
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise FitError(f"the image must be H x W x 3 (RGB) or x 4 (RGBA), got shape {array.shape}")
    data = array.astype(np.float32)
    if array.dtype == np.uint8:
        data /= 255.0
    if array.shape[2] == 4:
        data = data[..., :3] * data[..., 3:] + (1.0 - data[..., 3:])
    tensor = torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))).unsqueeze(0).clamp(0, 1)
    # Fit the longer side, pad the shorter with white.
    h, w = tensor.shape[2:]
    side = max(h, w)
    padded = torch.ones(1, 3, side, side)
    padded[:, :, (side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = tensor
    return torch.nn.functional.interpolate(
        padded,
        size=(size, size),
        mode="area" if side > size else "bilinear",
        align_corners=None if side > size else False,
    )


class Fitter:
    """A loaded model and library, ready to fit targets."""

    def __init__(self, model: JointModel, index: LibraryIndex, model_id: str, device: torch.device):
        self.model = model
        self.index = index
        self.device = device
        self.model_id = model_id
        self.sources, self.codes = self._load_codes()

    @classmethod
    def open(cls, checkpoint: str | os.PathLike, index: str | os.PathLike, device: str | None = None) -> Fitter:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, _, _ = load_checkpoint(checkpoint, device)
        library = load_index(index)
        if len(library) == 0:
            raise FitError(f"the index {index} holds no sources; index a library with models first")
        return cls(model, library, checkpoint_id(checkpoint), device)

    # -- the library's codes, cached per checkpoint ---------------------------------------
    def _cache_path(self) -> Path:
        return self.index.folder / f"model-{self.model_id}.npz"

    def _library_key(self) -> str:
        return json.dumps([s.arrays for s in self.index.sources])

    def _load_codes(self) -> tuple[SourceTensors, dict[str, torch.Tensor]]:
        path = self._cache_path()
        key = self._library_key()
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as data:
                    if int(data["version"]) == CACHE_VERSION and str(data["library"]) == key:
                        sources = SourceTensors(
                            **{f: torch.from_numpy(data[f"source_{f}"]) for f in SourceTensors.__dataclass_fields__}
                        )
                        codes = {k: torch.from_numpy(data[k]) for k in ("embedding", "sigma", "global", "parts")}
                        return sources.to(self.device), {k: v.to(self.device) for k, v in codes.items()}
            except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile, zlib.error):
                pass  # a damaged cache is rebuilt below
        sources = stack_sources(
            [self.index.load_source(i) for i in range(len(self.index))], self.model.config.max_parts
        )
        sources = sources.to(self.device)
        codes = self.encode_sources(sources)
        arrays = {f"source_{f}": getattr(sources, f).cpu().numpy() for f in SourceTensors.__dataclass_fields__}
        arrays.update({k: v.cpu().numpy() for k, v in codes.items()})
        for stale in self.index.folder.glob("model-*.npz"):
            if stale != path and _is_code_cache(stale):  # never a user's file that merely matches the name
                stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, version=CACHE_VERSION, library=key, name=path.name, **arrays)
        os.replace(tmp, path)
        return sources, codes

    @torch.no_grad()
    def encode_sources(self, sources: SourceTensors, batch: int = 256) -> dict[str, torch.Tensor]:
        n = self.model.config.source_points
        out: dict[str, list] = {"embedding": [], "sigma": [], "global": [], "parts": []}
        for start in range(0, len(sources), batch):
            rows = torch.arange(start, min(start + batch, len(sources)), device=self.device)
            sub = sources.select(rows)
            sub.points, sub.labels = sub.points[:, :n], sub.labels[:, :n]
            embedding, sigma = self.model.retrieval.embed_sources(sub)
            global_code, parts = self.model.deformation.encode_sources(sub)
            for key, value in zip(out, (embedding, sigma, global_code, parts)):
                out[key].append(value)
        return {k: torch.cat(v) for k, v in out.items()}

    # -- fitting ----------------------------------------------------------------------------
    def fit_points(self, points, options: FitOptions = FitOptions(), progress: Progress | None = None) -> FitResult:
        """Fit an (N, 3) point cloud in world coordinates (Z up, metres).

        ``progress(done, total, text)`` is called between batches and stages; an exception
        raised in it propagates (the fit is cancelled, nothing is written)."""
        started = time.perf_counter()
        if options.headings not in ("auto", "fixed"):
            raise FitError(f"headings must be 'auto' or 'fixed', got {options.headings!r}")
        check_viewpoint(options.viewpoint)
        cloud, notes = clean_points(points, self.model.config.n_points)
        target = torch.from_numpy(cloud).float().to(self.device)
        turns = max(1, options.yaw_search)
        yaws = torch.arange(turns, dtype=torch.float32) * (2 * np.pi / turns)
        if options.headings == "auto":
            yaws = torch.unique(torch.cat([yaws, candidate_headings(target.cpu())]))
        _report(progress, 0, 1, f"ranking {len(self.sources)} sources at {len(yaws)} headings")
        fit = fit_cloud(
            self.model,
            self.sources,
            self.codes,
            target,
            yaws.to(self.device),
            top_k=options.top_k,
            pool=max(options.rerank_pool, options.top_k),
            refine=options.refine,
            steps=options.refine_steps,
            symmetry_weight=options.symmetry_weight,
            size_weight=options.size_weight,
            fine_headings=FINE_HEADINGS if options.headings == "auto" else 0,
            viewpoint=options.viewpoint
            if options.viewpoint is None or isinstance(options.viewpoint, str)
            else torch.tensor(options.viewpoint, dtype=torch.float32),
            max_seconds=options.refine_seconds,
            progress=progress,
        )
        with torch.no_grad():
            turned = (target - fit.centre[0]) / fit.diagonal[0]  # retrieval distance: reported, not used
            distance = embedding_distance(self.model, turned.unsqueeze(0), "points", self.codes["embedding"])[0]
        predicted = self.codes["sigma"][fit.rows] * distance[fit.rows] / 100.0
        candidates = self._candidates(
            fit.rows,
            distance,
            predicted,
            fit.chamfer,
            self.sources.select(fit.rows),
            fit.boxes,
            fit.centre.cpu().numpy(),
            fit.diagonal.cpu().numpy(),
            fit.yaw.cpu().numpy(),
            fit.pivot.cpu().numpy().astype(np.float64),
            None,
            original=fit.placed,
        )
        _report(progress, 1, 1, "fitted")
        view = None if fit.viewpoint is None else view_record(fit.viewpoint.cpu().numpy(), fit.estimated)
        return FitResult("points", candidates, notes, time.perf_counter() - started, view=view)

    def fit_image(self, image, options: FitOptions = FitOptions(), progress: Progress | None = None) -> FitResult:
        """Fit an (H, W, 3|4) image: every source ranked by silhouette agreement from a grid of views
        (``backend.silhouettes``; the learned image code breaks near-ties), the best stretched to the
        image's proportions. The fit has the retrieved source's own size and rests on z = 0 at the origin
        (``refine`` needs a point cloud and is ignored). ``progress`` as in ``fit_points``."""
        started = time.perf_counter()
        _report(progress, 0, 2, "finding the object in the image")
        target = image_tensor(image, self.model.config.image_size).to(self.device)
        try:
            mask = foreground_mask(image)  # no usable foreground: one clear line before any work
        except ValueError as error:
            raise FitError(str(error)) from None
        if getattr(self, "_silhouettes", None) is None:  # the indexer stores it; else built once and kept there
            arrays = [record.arrays for record in self.index.sources]
            self._silhouettes = SilhouetteBank.cached(
                self.sources.points, self.index.folder, progress=progress, arrays=arrays
            )
        _report(progress, 1, 2, f"ranking {len(self.sources)} sources by silhouette")
        with torch.no_grad():
            distance = embedding_distance(self.model, target, "images", self.codes["embedding"])[0]
            match = match_image(image, self.sources, self._silhouettes, options.top_k, prior=distance, mask=mask)
            order = match.order
            chosen = self.sources.select(order)
        predicted = self.codes["sigma"][order] * distance[order] / 100.0
        candidates = self._candidates(
            order, distance, predicted, None, chosen, match.boxes, None, None, 0.0, np.zeros(3), None
        )
        _report(progress, 2, 2, "fitted")
        return FitResult("images", candidates, [], time.perf_counter() - started, view=match.view)

    def refit(
        self,
        points,
        source_index: int,
        boxes: np.ndarray,
        locked: np.ndarray,
        yaw: float = 0.0,
        options: FitOptions = FitOptions(),
        progress: Progress | None = None,
    ) -> FitResult:
        """Refine an existing fit of source ``source_index`` to the target
        ``points`` with the ``locked`` (K,) parts held at ``boxes`` (K, 6), the
        fit's boxes as ``Candidate.fitted_boxes`` gives them (user-edited).
        ``progress`` as in ``fit_points``."""
        from backend.refitting import refit_with_locks  # the locked-parts refit lives with the editing code

        return refit_with_locks(self, points, source_index, boxes, locked, yaw, options, progress)

    def _candidates(
        self,
        order,
        distance,
        predicted,
        measured,
        chosen,
        boxes,
        centre,
        diagonal,
        yaw,
        pivot,
        placement,
        original: torch.Tensor | None = None,
    ) -> list[Candidate]:
        """Candidates in the world frame. ``centre`` (C, 3) or (3,), ``diagonal`` and ``yaw``
        (C,) or scalars: each candidate's normalised frame and heading (``centre`` None: an image
        fit, placed by ``placement`` or resting on the floor at its source's size). ``original``
        (C, K, 6): the undeformed placed boxes (default: the sources' normalised boxes)."""
        out = []
        count = len(order)
        original = chosen.boxes if original is None else original
        figures = {k: v.cpu().numpy() for k, v in plausibility(boxes, chosen).items()}
        yaws = np.broadcast_to(np.asarray(yaw, float), (count,))
        scales = None if diagonal is None else np.broadcast_to(np.asarray(diagonal, float), (count,))
        centres = None if centre is None else np.broadcast_to(np.asarray(centre, float), (count, 3))
        for rank, row in enumerate(order.tolist()):
            record = self.index.sources[row]
            k = record.n_parts
            fitted_n = boxes[rank, :k].cpu().numpy().astype(np.float64)
            original_n = original[rank, :k].cpu().numpy().astype(np.float64)
            if centres is None:  # image: place the fit by the given or the source's own size
                where, size = placement if placement is not None else (None, float(self.sources.scale[row]))
                if where is None:
                    lo = (fitted_n[:, :3] - fitted_n[:, 3:]).min(axis=0) * size
                    where = np.array([0.0, 0.0, -lo[2]])  # resting on the floor
                frame_centre, frame_scale = np.asarray(where, float), float(size)
            else:
                frame_centre, frame_scale = centres[rank], float(scales[rank])
            rotation = rotation_z(float(yaws[rank]))
            out.append(
                Candidate(
                    rank=rank,
                    source_index=row,
                    source_path=record.path,
                    retrieval_distance=float(distance[row]),
                    predicted_chamfer=float(predicted[rank]),
                    measured_chamfer=None if measured is None else float(measured[rank]),
                    source_boxes=self.index_boxes(row),
                    original_boxes=_to_world(original_n, frame_centre, frame_scale, rotation, pivot),
                    fitted_boxes=_to_world(fitted_n, frame_centre, frame_scale, rotation, pivot),
                    yaw=float(yaws[rank]),
                    pivot=np.asarray(pivot, float),
                    scale_factor_p95=float(figures["scale_factor_p95"][rank]),
                    share_over_3x=float(figures["share_over_3x"][rank]),
                )
            )
        return out

    def index_boxes(self, row: int) -> np.ndarray:
        """Boxes of source ``row`` in its own file's frame (metres)."""
        k = self.index.sources[row].n_parts
        b = self.sources.boxes[row, :k].cpu().numpy().astype(np.float64)
        centre, scale = self.sources.centre[row].cpu().numpy(), float(self.sources.scale[row])
        return np.concatenate([b[:, :3] * scale + centre, b[:, 3:] * scale], axis=1)


def _to_world(boxes: np.ndarray, centre: np.ndarray, scale: float, rotation: np.ndarray, pivot) -> np.ndarray:
    """(K, 6) normalised boxes -> metres in the target's frame, turned by ``rotation`` about ``pivot``."""
    world = np.concatenate([boxes[:, :3] * scale + centre, boxes[:, 3:] * scale], axis=1)
    world[:, :3] = (world[:, :3] - pivot) @ rotation.T + pivot
    return world
