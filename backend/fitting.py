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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend import DEFAULT_CHECKPOINT  # noqa: F401  (re-exported)
from backend.geometry.frames import rotation_z
from backend.library import load_index
from backend.library.index import LibraryIndex
from backend.model.checkpoint import checkpoint_id, load_checkpoint
from backend.model.geometry import box_symmetry_loss, chamfer_distance, normalisation, project_positive
from backend.model.networks import JointModel, deformed_points
from backend.model.sources import SourceTensors, stack_sources

MIN_POINTS = 64
RERANK_POINTS = 512
MEASURE_POINTS = 1024
CACHE_VERSION = 1

Progress = Callable[[int, int, str], None]
"""``progress(done, total, text)``: called between stages of a long call; raising inside it cancels the call."""


def _report(progress: Progress | None, done: int, total: int, text: str) -> None:
    if progress is not None:
        progress(done, total, text)


class FitError(ValueError):
    """Input that cannot be fitted; the message says what is wrong."""


@dataclass(frozen=True)
class FitOptions:
    """Knobs of one fit.

    Attributes:
        top_k: candidates returned.
        refine: run the inner deformation optimisation (point targets only).
        yaw_search: try the target turned by this many even angles about Z
            and keep the best fit (1: trust the target's facing).
        rerank_pool: for point targets, this many retrieved candidates are
            deformed and re-ranked by their measured chamfer.
        refine_steps, refine_seconds: bounds of the optimisation.
        symmetry_weight: weight of the symmetry term during refinement.
    """

    top_k: int = 5
    refine: bool = False
    yaw_search: int = 1
    rerank_pool: int = 20
    refine_steps: int = 300
    refine_seconds: float = 1.5
    symmetry_weight: float = 1.0


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

    def to_json(self) -> dict:
        return {
            "modality": self.modality,
            "chamfer_units": "squared distances in the normalised frame (box diagonal 1), x100",
            "candidates": [c.to_json() for c in self.candidates],
            "warnings": self.warnings,
            "seconds": self.seconds,
        }


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


def refine_boxes(
    chosen: SourceTensors,
    boxes: torch.Tensor,
    truth: torch.Tensor,
    options: FitOptions,
    locked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inner deformation optimisation: Adam on each candidate's null-space
    coordinates, on chamfer to the target plus symmetry, from the
    network's prediction; stops on convergence, at ``refine_steps`` or
    after ``refine_seconds``. Parts marked in ``locked`` (P, K) keep
    their boxes exactly. Returns the refined boxes (P, K, 6)."""
    basis = chosen.basis
    start = basis.transpose(1, 2) @ boxes.reshape(len(boxes), -1, 1)
    directions = torch.eye(basis.shape[2], dtype=basis.dtype, device=basis.device).expand(len(boxes), -1, -1)
    if locked is not None and bool(locked.any()):
        # z = z0 + M w: z0 meets the locked boxes, M spans what leaves them be.
        starts, spans = [], []
        for p in range(len(boxes)):
            rows = locked[p].repeat_interleave(6).cpu().numpy()
            n_locked = basis[p].cpu().double().numpy()[rows]
            z0 = np.linalg.lstsq(n_locked, boxes[p].reshape(-1).cpu().double().numpy()[rows], rcond=None)[0]
            _, singular, vt = np.linalg.svd(n_locked, full_matrices=True)
            rank = int(np.sum(singular > 1e-9 * max(singular.max(initial=0.0), 1e-300)))
            starts.append(torch.from_numpy(z0).to(basis)[:, None])
            spans.append(torch.from_numpy(vt[rank:].T.copy()).to(basis))
        width = max(m.shape[1] for m in spans)
        start = torch.stack(starts)
        directions = torch.stack([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in spans])
    with torch.enable_grad():
        w = torch.zeros(len(boxes), directions.shape[2], 1, device=basis.device, requires_grad=True)
        optimiser = torch.optim.Adam([w], lr=2e-3)
        started, reference = time.perf_counter(), None
        for step in range(options.refine_steps):
            current = (basis @ (start + directions @ w)).reshape(boxes.shape)
            fit = chamfer_distance(deformed_points(chosen, current), truth)
            shortfall = torch.relu(chosen.min_half.view(-1, 1, 1) - current[..., 3:]) * chosen.part_mask.unsqueeze(-1)
            loss = (
                fit
                + options.symmetry_weight * box_symmetry_loss(current, chosen.mirror, chosen.axis)
                + 10 * shortfall.square().sum((1, 2))
            ).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % 10 == 0:  # converged: under 0.1% better than 10 steps ago
                value = float(loss.detach())
                if reference is not None and reference - value <= 1e-3 * abs(reference):
                    break
                reference = value
            if time.perf_counter() - started > options.refine_seconds:
                break
    with torch.no_grad():
        final = (basis @ (start + directions @ w)).reshape(boxes.shape)
        return torch.cat([final[..., :3], torch.maximum(final[..., 3:], chosen.min_half.view(-1, 1, 1))], dim=-1)


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
            with np.load(path, allow_pickle=False) as data:
                if int(data["version"]) == CACHE_VERSION and str(data["library"]) == key:
                    sources = SourceTensors(
                        **{f: torch.from_numpy(data[f"source_{f}"]) for f in SourceTensors.__dataclass_fields__}
                    )
                    codes = {k: torch.from_numpy(data[k]) for k in ("embedding", "sigma", "global", "parts")}
                    return sources.to(self.device), {k: v.to(self.device) for k, v in codes.items()}
        sources = stack_sources(
            [self.index.load_source(i) for i in range(len(self.index))], self.model.config.max_parts
        )
        sources = sources.to(self.device)
        codes = self.encode_sources(sources)
        arrays = {f"source_{f}": getattr(sources, f).cpu().numpy() for f in SourceTensors.__dataclass_fields__}
        arrays.update({k: v.cpu().numpy() for k, v in codes.items()})
        for stale in self.index.folder.glob("model-*.npz"):
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, version=CACHE_VERSION, library=key, **arrays)
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

        ``progress(done, total, text)`` is called between stages; an exception raised in it propagates."""
        started = time.perf_counter()
        cloud, notes = clean_points(points, self.model.config.n_points)
        lo, hi = cloud.min(axis=0), cloud.max(axis=0)
        pivot = (lo + hi) / 2
        best: list[Candidate] | None = None
        turns = max(1, options.yaw_search)
        for turn in range(turns):
            _report(progress, turn, turns, f"fitting heading {turn + 1} of {turns}")
            yaw = 2 * np.pi * turn / max(1, options.yaw_search)
            # Turning the target by -yaw, fitting, then turning the fit by +yaw.
            turned = (cloud - pivot) @ rotation_z(-yaw).T + pivot
            target = torch.from_numpy(turned).float().unsqueeze(0).to(self.device)
            centre, diagonal = normalisation(target)
            normalised = (target - centre.unsqueeze(1)) / diagonal.view(-1, 1, 1)
            candidates = self._fit(normalised, "points", options, centre[0].cpu().numpy(), float(diagonal), yaw, pivot)
            if best is None or candidates[0].measured_chamfer < best[0].measured_chamfer:
                best = candidates
        _report(progress, turns, turns, "fitted")
        return FitResult("points", best, notes, time.perf_counter() - started)

    def fit_image(
        self,
        image,
        options: FitOptions = FitOptions(),
        placement: tuple[np.ndarray, float] | None = None,
        progress: Progress | None = None,
    ) -> FitResult:
        """Fit an (H, W, 3|4) image. The result is placed at ``placement``
        (centre in metres, box diagonal in metres); by default the retrieved
        source's own size, resting on z = 0 at the origin. ``progress`` as in ``fit_points``."""
        started = time.perf_counter()
        _report(progress, 0, 1, "fitting the image")
        target = image_tensor(image, self.model.config.image_size).to(self.device)
        candidates = self._fit(
            target,
            "images",
            FitOptions(**{**options.__dict__, "refine": False}),
            None,
            None,
            0.0,
            np.zeros(3),
            placement,
        )
        notes = ["refinement needs a point cloud target; skipped for an image"] if options.refine else []
        _report(progress, 1, 1, "fitted")
        return FitResult("images", candidates, notes, time.perf_counter() - started)

    @torch.no_grad()
    def _fit(self, target, modality, options, centre, diagonal, yaw, pivot, placement=None) -> list[Candidate]:
        model = self.model
        embedding = model.retrieval.embed_target(target, modality)
        distance = torch.cdist(embedding, self.codes["embedding"])[0]
        pool = min(len(distance), max(options.top_k, options.rerank_pool if modality == "points" else options.top_k))
        order = torch.argsort(distance)[:pool]
        chosen = self.sources.select(order)
        target_code = model.deformation.encode_target(target, modality).expand(pool, -1)
        boxes = model.deformation.predict_boxes(
            chosen, self.codes["global"][order], self.codes["parts"][order], target_code
        )
        boxes = project_positive(boxes, chosen.basis, chosen.min_half, chosen.part_mask)
        measured = None
        if modality == "points":
            # Re-rank on uniform subsets of both clouds, measure the kept ones in full.
            coarse = chamfer_distance(
                deformed_points(chosen.first_points(RERANK_POINTS), boxes),
                target[:, :RERANK_POINTS].expand(pool, -1, -1),
            )
            keep = torch.argsort(coarse)[: options.top_k]
            order, boxes, chosen = order[keep], boxes[keep], chosen.select(keep)
            truth = target.expand(len(keep), -1, -1)
            if options.refine:
                boxes = self.refine(chosen.first_points(RERANK_POINTS), boxes, truth, options)
            measured = chamfer_distance(deformed_points(chosen.first_points(MEASURE_POINTS), boxes), truth)
            resort = torch.argsort(measured)
            order, boxes, measured, chosen = order[resort], boxes[resort], measured[resort], chosen.select(resort)
        else:
            order, boxes = order[: options.top_k], boxes[: options.top_k]
            chosen = chosen.select(torch.arange(len(order), device=self.device))
        predicted = self.codes["sigma"][order] * distance[order] / 100.0
        return self._candidates(
            order, distance, predicted, measured, chosen, boxes, centre, diagonal, yaw, pivot, placement
        )

    def refine(
        self,
        chosen: SourceTensors,
        boxes: torch.Tensor,
        truth: torch.Tensor,
        options: FitOptions,
        locked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """See ``refine_boxes``."""
        return refine_boxes(chosen, boxes, truth, options, locked)

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
        self, order, distance, predicted, measured, chosen, boxes, centre, diagonal, yaw, pivot, placement
    ) -> list[Candidate]:
        out = []
        rotation = rotation_z(yaw)
        for rank, row in enumerate(order.tolist()):
            record = self.index.sources[row]
            k = record.n_parts
            source_boxes = self.index_boxes(row)
            fitted_n = boxes[rank, :k].cpu().numpy().astype(np.float64)
            original_n = chosen.boxes[rank, :k].cpu().numpy().astype(np.float64)
            if centre is None:  # image: place the fit by the given or the source's own size
                src_centre, src_scale = self.sources.centre[row].cpu().numpy(), float(self.sources.scale[row])
                where, size = placement if placement is not None else (None, src_scale)
                if where is None:
                    lo = (fitted_n[:, :3] - fitted_n[:, 3:]).min(axis=0) * size
                    where = np.array([0.0, 0.0, -lo[2]])  # resting on the floor
                frame_centre, frame_scale = np.asarray(where, float), float(size)
            else:
                frame_centre, frame_scale = np.asarray(centre, float), float(diagonal)

            def to_world(b: np.ndarray) -> np.ndarray:
                world = np.concatenate([b[:, :3] * frame_scale + frame_centre, b[:, 3:] * frame_scale], axis=1)
                world[:, :3] = (world[:, :3] - pivot) @ rotation.T + pivot
                return world

            out.append(
                Candidate(
                    rank=rank,
                    source_index=row,
                    source_path=record.path,
                    retrieval_distance=float(distance[row]),
                    predicted_chamfer=float(predicted[rank]),
                    measured_chamfer=None if measured is None else float(measured[rank]),
                    source_boxes=source_boxes,
                    original_boxes=to_world(original_n),
                    fitted_boxes=to_world(fitted_n),
                    yaw=float(yaw),
                    pivot=np.asarray(pivot, float),
                )
            )
        return out

    def index_boxes(self, row: int) -> np.ndarray:
        """Boxes of source ``row`` in its own file's frame (metres)."""
        k = self.index.sources[row].n_parts
        b = self.sources.boxes[row, :k].cpu().numpy().astype(np.float64)
        centre, scale = self.sources.centre[row].cpu().numpy(), float(self.sources.scale[row])
        return np.concatenate([b[:, :3] * scale + centre, b[:, 3:] * scale], axis=1)
