"""Out-of-distribution check: fit quality on furniture made by a second, independent generator.

    .venv/bin/python bench/ood.py [--per-category 100] [--targets 5] [--modes full scan full_turned scan_turned]
        [--target-seed 1] [--mixed] [--tell-viewpoint] [--fit-options '{"refine": true}'] [--no-pipeline] [--threads 1]
        [--placement-ranking] [--visible-ranking] [--no-product]
        [--checkpoint backend/checkpoints/default.pt] [--out bench/out/ood] [--json PATH] [--write docs/ood.md]
    .venv/bin/python bench/ood.py --report RESULTS.json [--write docs/ood.md]     # tables of a saved run

What it does (see docs/ood.md):

1. Builds an OOD library with ``training.data.ood`` (``--per-category`` models per category, seed 0), one index per
   category and, with ``--mixed``, one over all of them; cached under ``--out`` (git-ignored ``bench/out/``) and
   reused when the same size exists.
2. Makes targets that are not in the library (``--targets`` per category, another seed): ``full`` clouds, ``scan``
   (one view, ``training.data.views.partial_cloud``), and both turned about the vertical by a random angle per target
   (``full_turned``, ``scan_turned``).
3. Fits each with the product's default (``Fitter.fit_points`` with ``FitOptions()``, overridable by
   ``--fit-options``) and, unless ``--no-pipeline``, the learning-free pipeline
   (``backend.model.inference.fit_cloud`` with no model: per-axis placement of every source, coarse chamfer on 256
   points, refinement of the top 5 from that placement, heading trusted). ``--tell-viewpoint`` adds a
   ``product_told_viewpoint`` row: the product given each scan's true scanner direction (``FitOptions.viewpoint``);
   ``--placement-ranking`` a diagnostic ``placement_ranking`` row (``placement_ranking_fit``), ``--visible-ranking``
   a diagnostic ``visible_ranking`` row on unturned scans (``visible_ranking``: the bound of what a scan shows).
4. Measures every fit against a dense sample of the true surface: chamfer x10^-2 (squared distances, mean per
   direction, summed) on coordinates divided by the true shape's box diagonal; the fitted shape is ``FIT_POINTS``
   samples of the source's own part meshes carried by the fitted part boxes. Reference: the per-axis box oracle, the
   library model that, scaled per axis to the true shape's box, is closest (learning-free, knows the answer); floor:
   a perfect fit (sampling noise). Ratios: of the means over targets and the mean of per-target ratios;
   plausibility is the 95th percentile of per-part scale factors and the share of parts over 3x on some axis
   (``part_scale_factors``).

Python interface (for other benches and tests)::

    libraries = build_libraries(Path("bench/out/ood"), per_category=100)  # {"chair": index_dir, ..., ["mixed"]}
    targets = make_targets(per_category=5)                                 # list[Target]
    library = load_library(index_dir)                                      # LibraryArrays (file frame, metres)
    values, best = per_axis_oracle(library, target.truth, target.bounds)  # (S,) chamfer x100, best row
    fit = product_fit(FitOptions())(fitter, cloud)                         # Fit(row, boxes (K, 6) world, yaw, seconds)
    points = fitted_surface(library, fit)                                  # (FIT_POINTS, 3) world
    value = dense_chamfer(points, target.truth_for(mode), target.diagonal) # chamfer x100
    results = evaluate(fitters, libraries_arrays, targets, methods, modes) # every number (JSON-able)
    markdown = report(results)

``methods`` maps a row name to ``Callable[[Fitter, np.ndarray], Fit]`` (or with a third parameter, which gets a
scan's true scanner direction (3,), None for full clouds); pass your own to measure a variant.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.export import part_meshes  # noqa: E402
from backend.fitting import DEFAULT_CHECKPOINT, FitOptions, Fitter, clean_points  # noqa: E402
from backend.geometry.frames import rotation_z  # noqa: E402
from backend.geometry.sampling import sample_surface, seed_from_bytes  # noqa: E402
from backend.library import LibraryIndex, build_index, load_index  # noqa: E402
from backend.model.checkpoint import checkpoint_id  # noqa: E402
from backend.model.geometry import chamfer_distance, deform_points  # noqa: E402
from backend.render import Camera, visible_points  # noqa: E402
from training.data.ood import CATEGORIES, OODShape, generate, write_glb  # noqa: E402
from training.data.views import partial_cloud, random_camera  # noqa: E402

LIBRARY_SEED = 0
TARGET_SEED = 1  # targets come from another seed: never in the library
TRUTH_POINTS = 16384
FIT_POINTS = 16384  # samples of a fitted shape (the index's 2,048 would put a noise floor of 0.02 under every row)
CLOUD_POINTS = 4096
SHORTLIST = 8  # the oracle measures this many coarse-best sources exactly
COARSE_SOURCE, COARSE_TRUTH = 512, 1024
IMPLAUSIBLE = 3.0
MODES = ("full", "scan", "full_turned", "scan_turned")
VISIBLE_SAMPLES = 4 * TRUTH_POINTS  # surface samples drawn before a z-buffer keeps the seen ones (partial_cloud: 4x)
RANK_POINTS = 4096  # seen samples per side in the visible ranking (k-d tree queries between far shapes are slow)
# Views from all round (every 45 degrees, below and above, and both poles): what some camera position could see.
ANYWHERE = tuple(Camera(azimuth=a, elevation=e) for a in range(0, 360, 45) for e in (-60, -20, 20, 60)) + (
    Camera(azimuth=0, elevation=89),
    Camera(azimuth=0, elevation=-89),
)


# -- library and targets ---------------------------------------------------------------------------
def build_libraries(out: Path, per_category: int, mixed: bool = False, jobs: int = 2) -> dict[str, Path]:
    """Write (once) ``per_category`` OOD models per category under ``out`` and index them.

    Returns:
        category (and ``"mixed"``) -> index folder. The mixed index covers the same files as all categories.
    """
    root = out / f"library-{per_category}"
    for category in CATEGORIES:
        for i in range(per_category):
            path = root / category / f"{category}_{i:03d}.glb"
            if not path.exists():
                write_glb(generate(category, LIBRARY_SEED, i), path)
    indexes = {}
    for category in CATEGORIES:
        indexes[category] = out / f"index-{per_category}" / category
        build_index(root / category, indexes[category], jobs=jobs)
    if mixed:
        indexes["mixed"] = out / f"index-{per_category}" / "mixed"
        build_index(root, indexes["mixed"], jobs=jobs)
    return indexes


@dataclass
class Target:
    """A shape that is not in the library, with its clouds and the dense truth.

    Attributes:
        truth: (T, 3) dense samples of the true surface (unturned, metres).
        bounds: (2, 3) the true shape's box; diagonal: its diagonal (the metric's unit for every mode).
        yaw: radians the turned modes are turned by about the vertical through the box centre.
        clouds: mode -> (N, 3) float32 input cloud.
        cameras: mode -> the ``Camera`` of a scan (unturned ``"scan"`` only; framed on ``bounds``).
        mesh: the true shape's (V, 3) vertices and (F, 3) faces (metres, unturned).
        viewpoints: scan mode -> (3,) unit direction from the object towards the scanner (turned with the mode).
        floor: chamfer x100 of a perfect fit (another ``FIT_POINTS`` samples of the true surface): sampling noise,
            the least any row can measure.
    """

    category: str
    index: int
    family: str
    truth: np.ndarray
    bounds: np.ndarray
    diagonal: float
    yaw: float
    clouds: dict[str, np.ndarray] = field(default_factory=dict)
    viewpoints: dict[str, np.ndarray] = field(default_factory=dict)
    floor: float = 0.0
    cameras: dict[str, Camera] = field(default_factory=dict)
    mesh: tuple[np.ndarray, np.ndarray] | None = None

    def turn(self, points: np.ndarray) -> np.ndarray:
        """``points`` turned by ``yaw`` about the vertical through the true box's centre."""
        pivot = self.bounds.mean(axis=0)
        return (points - pivot) @ rotation_z(self.yaw).T + pivot

    def truth_for(self, mode: str) -> np.ndarray:
        return self.turn(self.truth) if mode.endswith("_turned") else self.truth


def make_target(category: str, index: int, seed: int = TARGET_SEED) -> Target:
    """Target ``index`` of ``category``: every mode's cloud, deterministic in (category, index, seed)."""
    shape: OODShape = generate(category, seed, index)
    rng = np.random.default_rng([seed, CATEGORIES.index(category), index, 7])
    vertices, faces = shape.mesh_arrays()
    truth = sample_surface(vertices, faces, TRUTH_POINTS, rng)[0]
    bounds = np.stack([vertices.min(axis=0), vertices.max(axis=0)])
    target = Target(
        category,
        index,
        shape.family,
        truth,
        bounds,
        float(np.linalg.norm(bounds[1] - bounds[0])),
        rng.uniform(0, 2 * np.pi),
    )
    target.clouds["full"] = sample_surface(vertices, faces, CLOUD_POINTS, rng)[0].astype(np.float32)
    camera = random_camera(rng)
    target.clouds["scan"] = partial_cloud(shape, CLOUD_POINTS, rng, camera=camera)
    target.cameras["scan"], target.mesh = camera, (vertices, faces)
    target.viewpoints["scan"] = -camera.view(np.zeros(3), 1.0)[0][2]  # the camera looks along -direction
    target.viewpoints["scan_turned"] = rotation_z(target.yaw) @ target.viewpoints["scan"]
    target.clouds["full_turned"] = target.turn(target.clouds["full"]).astype(np.float32)
    target.clouds["scan_turned"] = target.turn(target.clouds["scan"]).astype(np.float32)
    again = sample_surface(
        vertices, faces, FIT_POINTS, np.random.default_rng([seed, CATEGORIES.index(category), index, 8])
    )
    target.floor = dense_chamfer(again[0], truth, target.diagonal)
    return target


def make_targets(per_category: int, seed: int = TARGET_SEED) -> list[Target]:
    return [make_target(c, i, seed) for c in CATEGORIES for i in range(per_category)]


# -- library arrays in the files' frame ------------------------------------------------------------
@dataclass
class LibraryArrays:
    """Every source of an index in its file's frame (Z up, metres), padded to K parts.

    Attributes:
        points: (S, N, 3) float64 indexed surface samples (for ranking); labels: (S, N) long part of each.
        boxes: (S, K, 6) part boxes (padded parts: unit half-size); n_parts: (S,).
        bounds: (S, 2, 3) union of each source's part boxes.
        paths: library-relative path of each source.
    """

    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    n_parts: torch.Tensor
    bounds: torch.Tensor
    paths: list[str]
    index: LibraryIndex
    _dense: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def dense(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(FIT_POINTS, 3) samples of source ``row``'s own part meshes (file frame) and the (FIT_POINTS,) part of
        each; the same samples every time (seeded by the file's path)."""
        if row not in self._dense:
            meshes = part_meshes(self.index, row)
            offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
            vertices = np.concatenate([m.vertices for m in meshes])
            faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])
            face_part = np.concatenate([np.full(len(m.faces), k) for k, m in enumerate(meshes)])
            rng = np.random.default_rng(seed_from_bytes(self.paths[row]))
            points, face = sample_surface(vertices, faces, FIT_POINTS, rng)
            self._dense[row] = torch.from_numpy(points), torch.from_numpy(face_part[face])
        return self._dense[row]


def load_library(index_dir: Path) -> LibraryArrays:
    index = load_index(index_dir)
    sources = [index.load_source(i) for i in range(len(index))]
    n = min(len(s.points) for s in sources)
    k = max(s.n_parts for s in sources)
    boxes = np.zeros((len(sources), k, 6))
    boxes[..., 3:] = 1.0
    for i, s in enumerate(sources):
        boxes[i, : s.n_parts] = s.boxes
    return LibraryArrays(
        points=torch.from_numpy(np.stack([s.points[:n] for s in sources]).astype(np.float64)),
        labels=torch.from_numpy(np.stack([s.point_labels[:n] for s in sources]).astype(np.int64)),
        boxes=torch.from_numpy(boxes),
        n_parts=torch.tensor([s.n_parts for s in sources]),
        bounds=torch.from_numpy(np.stack([s.bounds for s in sources])),
        paths=[r.path for r in index.sources],
        index=index,
    )


# -- the metric and the oracle ---------------------------------------------------------------------
def dense_chamfer(points: np.ndarray, truth: np.ndarray, diagonal: float) -> float:
    """Chamfer x100 between a fitted shape's (N, 3) samples and the (T, 3) dense truth, in units of ``diagonal``.

    Squared distances, mean per direction, summed: the same value as ``backend.model.geometry.chamfer_distance``
    on the scaled sets, with k-d trees because T is large.
    """
    a, b = np.asarray(points, float) / diagonal, np.asarray(truth, float) / diagonal
    to_truth = cKDTree(b).query(a)[0]
    to_points = cKDTree(a).query(b)[0]
    return float((np.square(to_truth).mean() + np.square(to_points).mean()) * 100)


def scaled_per_axis(points: torch.Tensor, source_bounds: torch.Tensor, bounds: np.ndarray) -> torch.Tensor:
    """(S, N, 3) sources' samples ``points`` mapped per axis from their boxes ``source_bounds`` (S, 2, 3) onto
    the box ``bounds`` (2, 3)."""
    lo, hi = source_bounds[:, 0:1], source_bounds[:, 1:2]
    target = torch.from_numpy(np.asarray(bounds, float))
    return target[0] + (points - lo) / (hi - lo).clamp_min(1e-9) * (target[1] - target[0])


def per_axis_oracle(library: LibraryArrays, truth: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, int]:
    """The per-axis box oracle of one target: every source scaled per axis to the true box, measured.

    All sources are ranked in one batched pass on ``COARSE_SOURCE`` / ``COARSE_TRUTH`` points; the ``SHORTLIST``
    best are measured with ``dense_chamfer`` on ``FIT_POINTS`` samples of each (the coarse value only ranks).

    Returns:
        (S,) chamfer x100 (coarse values, except the exact shortlisted ones) and the best source's row.
    """
    diagonal = float(np.linalg.norm(bounds[1] - bounds[0]))
    scaled = scaled_per_axis(library.points[:, :COARSE_SOURCE], library.bounds, bounds)
    coarse_truth = torch.from_numpy(truth[:COARSE_TRUTH] / diagonal).float()
    coarse = (
        chamfer_distance((scaled / diagonal).float(), coarse_truth.expand(len(library), -1, -1)).double().numpy() * 100
    )
    values = coarse.copy()
    for row in np.argsort(coarse)[:SHORTLIST]:  # a handful of sources, each measured against the dense truth
        points = library.dense(int(row))[0].unsqueeze(0)
        mapped = scaled_per_axis(points, library.bounds[row : row + 1], bounds)[0]
        values[row] = dense_chamfer(mapped.numpy(), truth, diagonal)
    shortlisted = np.argsort(coarse)[:SHORTLIST]
    best = int(shortlisted[np.argmin(values[shortlisted])])
    return values, best


# -- fits ------------------------------------------------------------------------------------------
@dataclass
class Fit:
    """One method's top-1 fit: source ``row`` with part boxes (K, 6) ``[centre, half]`` in the target's world frame,
    each part turned by ``yaw`` about Z (a part's points are ``centre + R(yaw) ((v - c_src) * half / half_src)``)."""

    row: int
    boxes: np.ndarray
    yaw: float = 0.0
    seconds: float = 0.0


def fitted_surface(library: LibraryArrays, fit: Fit) -> np.ndarray:
    """(FIT_POINTS, 3) the source's surface samples carried by the fitted boxes, world frame."""
    row, k = fit.row, int(library.n_parts[fit.row])
    points, labels = library.dense(row)
    boxes = library.boxes[row : row + 1].clone()
    fitted = boxes.clone()
    fitted[0, :k] = torch.from_numpy(np.asarray(fit.boxes, float))
    # Offsets from each part's fitted centre, then turned by the fit's yaw.
    local = torch.cat([torch.zeros_like(fitted[..., :3]), fitted[..., 3:]], dim=-1)
    offsets = deform_points(points.unsqueeze(0), labels.unsqueeze(0), boxes, local)[0]
    centres = fitted[0, labels, :3]
    return (centres + offsets @ torch.from_numpy(rotation_z(fit.yaw)).T).numpy()


def part_scale_factors(library: LibraryArrays, fit: Fit, diagonal: float) -> np.ndarray:
    """(K,) largest per-axis factor (>= 1, growing or shrinking) between each fitted part's size and its source
    part's size, both relative to their shape's box diagonal (so scaling a whole shape uniformly gives 1)."""
    row, k = fit.row, int(library.n_parts[fit.row])
    source = library.boxes[row, :k, 3:].numpy()
    source_diagonal = float(torch.linalg.norm(library.bounds[row, 1] - library.bounds[row, 0]))
    ratio = (np.asarray(fit.boxes)[:, 3:] / diagonal).clip(1e-12) / (source / source_diagonal).clip(1e-12)
    return np.maximum(ratio, 1 / ratio).max(axis=1)


def product_fit(options: FitOptions, tell_viewpoint: bool = False) -> Callable[..., Fit]:
    """The product's fit (``Fitter.fit_points``) with ``options``; its best candidate. With ``tell_viewpoint``, a
    scan's true scanner direction is passed as ``FitOptions.viewpoint`` (as a user who knows it would)."""

    def run(fitter: Fitter, cloud: np.ndarray, viewpoint: np.ndarray | None = None) -> Fit:
        started = time.perf_counter()
        chosen = options
        if tell_viewpoint and viewpoint is not None:
            chosen = FitOptions(**{**options.__dict__, "viewpoint": tuple(float(v) for v in viewpoint)})
        best = fitter.fit_points(cloud, chosen).candidates[0]
        return Fit(best.source_index, best.fitted_boxes, best.yaw, time.perf_counter() - started)

    return run


def pipeline_fit(fitter: Fitter, cloud: np.ndarray) -> Fit:
    """The learning-free pipeline: ``backend.model.inference.fit_cloud`` with no model, the cloud's own heading,
    the top 5 of the coarse ranking refined from their per-axis placement on plain chamfer."""
    from backend.model.inference import fit_cloud

    started = time.perf_counter()
    points = torch.from_numpy(np.asarray(cloud, np.float32))
    result = fit_cloud(None, fitter.sources, None, points, torch.zeros(1), top_k=1, pool=5)  # plain chamfer
    boxes = result.boxes[0].double()
    k = fitter.index.sources[int(result.rows[0])].n_parts
    centre, diagonal = result.centre[0].double(), float(result.diagonal[0])
    world = torch.cat([boxes[:k, :3] * diagonal + centre, boxes[:k, 3:] * diagonal], dim=-1).numpy()
    yaw = float(result.yaw[0])
    pivot = result.pivot.double().numpy()
    world[:, :3] = (world[:, :3] - pivot) @ rotation_z(yaw).T + pivot
    return Fit(int(result.rows[0]), world, yaw, time.perf_counter() - started)


def placement_ranking_fit(fitter: Fitter, cloud: np.ndarray, viewpoint: np.ndarray | None = None) -> Fit:
    """Diagnostic row (``--placement-ranking``): every source placed per axis on the cloud's box at the cloud's own
    heading, ranked by ``measured_chamfer`` (``partial_chamfer`` from a scan's true scanner direction, plain chamfer
    for a full cloud), the best placement returned unrefined. The OOD scans' boxes are the true boxes, so a perfect
    ranking of these placements is the per-axis box oracle: what this row misses, the scan objective misses."""
    from backend.model.placement import box_placement, target_extent
    from backend.model.scoring import measured_chamfer

    started = time.perf_counter()
    points = torch.from_numpy(clean_points(cloud, fitter.model.config.n_points)[0]).float()
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    centre, diagonal = (lo + hi) / 2, float((hi - lo).norm())
    target = (points - centre) / diagonal
    sources = fitter.sources
    placed = box_placement(sources, target_extent(target.unsqueeze(0))[0])
    view = None if viewpoint is None else torch.nn.functional.normalize(torch.as_tensor(viewpoint).float(), dim=0)
    with torch.no_grad():  # batches of 16 sources: a (16, cloud, 1,024) distance matrix at a time
        scores = torch.cat(
            [
                measured_chamfer(sources.select(rows), placed[rows], target.expand(len(rows), -1, -1), view)
                for rows in torch.arange(len(sources)).split(16)
            ]
        )
    row = int(scores.argmin())
    k = fitter.index.sources[row].n_parts
    boxes = placed[row, :k].double()
    world = torch.cat([boxes[:, :3] * diagonal + centre.double(), boxes[:, 3:] * diagonal], dim=-1).numpy()
    return Fit(row, world, 0.0, time.perf_counter() - started)


def seen_samples(
    vertices: np.ndarray,
    faces: np.ndarray,
    bounds: np.ndarray,
    cameras: tuple[Camera, ...],
    rng: np.random.Generator,
    count: int = VISIBLE_SAMPLES,
) -> np.ndarray:
    """(M, 3) of ``count`` area-uniform samples of the mesh (V, 3) / (F, 3) that some camera of ``cameras`` sees,
    through ``backend.render.visible_points`` (the scans' z-buffer) with every camera framed on the box ``bounds``
    (2, 3), as a scan of a shape with that box is framed (``partial_cloud``)."""
    points, point_faces = sample_surface(vertices, faces, count, rng)
    framed = np.concatenate([vertices, bounds])  # two unreferenced corners: the frame is the box, not the mesh
    seen = np.zeros(len(points), bool)
    for camera in cameras:
        seen |= visible_points(framed, faces, points, point_faces, camera)
    return points[seen]


def placed_mesh(library: LibraryArrays, row: int, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source ``row``'s part meshes as one mesh scaled per axis onto the box ``bounds`` (2, 3), as the oracle
    places it: (V, 3) vertices (metres) and (F, 3) faces."""
    meshes = part_meshes(library.index, row)
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    vertices = torch.from_numpy(np.concatenate([m.vertices for m in meshes]).astype(float)).unsqueeze(0)
    faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])
    return scaled_per_axis(vertices, library.bounds[row : row + 1], bounds)[0].numpy(), faces


def visible_ranking(library: LibraryArrays, target: Target, oracle_row: int) -> tuple[Fit, dict]:
    """Diagnostic row (``--visible-ranking``, unturned scans): the bound of any method that uses only what a scan
    shows. Every source is placed per axis on the TRUE box and ranked by the chamfer (x100, diagonal units) between
    its surface seen from the scan's real camera and the truth's surface seen from it (``seen_samples`` of
    ``VISIBLE_SAMPLES`` each, ``RANK_POINTS`` of the seen ones per side);
    the top-1 is returned as placed (measured by the caller against the whole truth, like every row).

    Returns:
        the top-1's fit, and extras: ``visible_rank_of_oracle`` (0 = first), ``exterior_oracle`` (the oracle's
        surface seen from ``ANYWHERE`` against the truth's, chamfer x100), ``oracle_vs_exterior`` (the oracle's whole
        surface against the truth's seen-from-anywhere samples), ``exterior_chamfer`` (the top-1's, as
        ``exterior_oracle``).
    """
    started = time.perf_counter()
    bounds, diagonal, camera = target.bounds, target.diagonal, target.cameras["scan"]
    seed = [CATEGORIES.index(target.category), target.index, 9]
    rng = np.random.default_rng(seed)

    def subsample(points: np.ndarray) -> np.ndarray:
        return points[rng.choice(len(points), RANK_POINTS, replace=len(points) < RANK_POINTS)]

    truth_seen = subsample(seen_samples(*target.mesh, bounds, (camera,), rng))
    # One raster per source (numpy z-buffer): a loop over the library, in the bench only.
    values = np.array(
        [
            dense_chamfer(
                subsample(seen_samples(*placed_mesh(library, row, bounds), bounds, (camera,), rng)),
                truth_seen,
                diagonal,
            )
            for row in range(len(library))
        ]
    )
    best = int(values.argmin())
    seconds = time.perf_counter() - started
    truth_out = seen_samples(*target.mesh, bounds, ANYWHERE, np.random.default_rng(seed + [1]))

    def exterior(row: int) -> float:
        seen = seen_samples(*placed_mesh(library, row, bounds), bounds, ANYWHERE, np.random.default_rng([row, 10]))
        return dense_chamfer(seen, truth_out, diagonal)

    oracle_whole = fitted_surface(library, _oracle_fit(library, oracle_row, bounds))
    extras = {
        "visible_rank_of_oracle": int((values < values[oracle_row]).sum()),
        "exterior_oracle": exterior(oracle_row),
        "oracle_vs_exterior": dense_chamfer(oracle_whole, truth_out, diagonal),
        "exterior_chamfer": exterior(best),
    }
    return Fit(best, _oracle_fit(library, best, bounds).boxes, 0.0, seconds), extras


# -- evaluation ------------------------------------------------------------------------------------
def evaluate(
    fitters: dict[str, Fitter],
    libraries: dict[str, LibraryArrays],
    targets: list[Target],
    methods: dict[str, Callable[[Fitter, np.ndarray], Fit]],
    modes=MODES,
    log: Callable[[str], None] = print,
    visible: bool = False,
) -> dict:
    """Every number of the check: per target, library, mode and method.

    ``fitters`` and ``libraries`` are keyed by library name (a category, or ``"mixed"``); a target is fitted in
    its own category's library and in the mixed one when present. With ``visible``, unturned scans also get a
    ``visible_ranking`` row (``visible_ranking``; its extras in the row).

    Returns:
        ``{"rows": [...], "summary": {...}}`` (JSON-able); a row holds target, category, family, library, mode,
        method, chamfer (x100), oracle (x100), source, seconds, scale_p95, share_over_3x.
    """
    rows = []
    for n, target in enumerate(targets):
        for name in [target.category] + (["mixed"] if "mixed" in fitters else []):
            library = libraries[name]
            oracle_values, oracle_row = per_axis_oracle(library, target.truth, target.bounds)
            oracle = float(oracle_values[oracle_row])
            oracle_fit = _oracle_fit(library, oracle_row, target.bounds)
            factors = part_scale_factors(library, oracle_fit, target.diagonal)
            base = {"target": f"{target.category}_{target.index}", "category": target.category}
            base.update(
                {"family": target.family, "library": name, "oracle": oracle, "yaw": target.yaw, "floor": target.floor}
            )
            rows.append(
                {
                    **base,
                    "mode": "all",
                    "method": "oracle",
                    "chamfer": oracle,
                    "source": oracle_row,
                    "seconds": 0.0,
                    **_plausibility(factors),
                }
            )
            for mode in modes:
                truth = target.truth_for(mode)
                for method, run in methods.items():
                    hints = (target.viewpoints.get(mode),) if len(inspect.signature(run).parameters) > 2 else ()
                    fit = run(fitters[name], target.clouds[mode], *hints)
                    value = dense_chamfer(fitted_surface(library, fit), truth, target.diagonal)
                    factors = part_scale_factors(library, fit, target.diagonal)
                    rows.append(
                        {
                            **base,
                            "mode": mode,
                            "method": method,
                            "chamfer": value,
                            "source": fit.row,
                            "seconds": fit.seconds,
                            **_plausibility(factors),
                        }
                    )
                if visible and mode == "scan":
                    fit, extras = visible_ranking(library, target, oracle_row)
                    value = dense_chamfer(fitted_surface(library, fit), truth, target.diagonal)
                    factors = part_scale_factors(library, fit, target.diagonal)
                    rows.append(
                        {
                            **base,
                            "mode": mode,
                            "method": "visible_ranking",
                            "chamfer": value,
                            "source": fit.row,
                            "seconds": fit.seconds,
                            **_plausibility(factors),
                            **extras,
                        }
                    )
        log(f"target {n + 1}/{len(targets)} {target.category}_{target.index} ({target.family}) done")
    return {"rows": rows, "summary": summarise(rows)}


def _oracle_fit(library: LibraryArrays, row: int, bounds: np.ndarray) -> Fit:
    """The oracle's boxes: source ``row``'s boxes mapped per axis onto ``bounds``."""
    k = int(library.n_parts[row])
    lo, hi = library.bounds[row, 0].numpy(), library.bounds[row, 1].numpy()
    factor = (bounds[1] - bounds[0]) / np.maximum(hi - lo, 1e-9)
    boxes = library.boxes[row, :k].numpy()
    return Fit(row, np.concatenate([bounds[0] + (boxes[:, :3] - lo) * factor, boxes[:, 3:] * factor], axis=1))


def _plausibility(factors: np.ndarray) -> dict:
    return {
        "parts": len(factors),
        "scale_p95": float(np.quantile(factors, 0.95)),
        "over_3x": int((factors > IMPLAUSIBLE).sum()),
        "max_factor": float(factors.max()),
    }


def summarise(rows: list[dict]) -> dict:
    """Means per (library kind, category, mode, method): chamfer, oracle, ratio of means, turned / unturned."""
    out: dict = {}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        kind = "mixed" if row["library"] == "mixed" else "category"
        for category in (row["category"], "all"):
            groups.setdefault((kind, category, row["mode"], row["method"]), []).append(row)
    for (kind, category, mode, method), members in sorted(groups.items()):
        chamfer = float(np.mean([r["chamfer"] for r in members]))
        oracle = float(np.mean([r["oracle"] for r in members]))
        entry = {
            "targets": len(members),
            "chamfer": chamfer,
            "oracle": oracle,
            "floor": float(np.mean([r["floor"] for r in members])),
            "ratio": chamfer / oracle,
            "ratio_mean_per_target": float(np.mean([r["chamfer"] / r["oracle"] for r in members])),
            "scale_p95_mean": float(np.mean([r["scale_p95"] for r in members])),
            "share_over_3x": sum(r["over_3x"] for r in members) / max(1, sum(r["parts"] for r in members)),
            "seconds_median": float(np.median([r["seconds"] for r in members])),
        }
        if mode.endswith("_turned"):
            plain = groups.get((kind, category, mode[: -len("_turned")], method))
            if plain:
                entry["turned_over_unturned"] = chamfer / float(np.mean([r["chamfer"] for r in plain]))
        out[f"{kind}/{category}/{mode}/{method}"] = entry
    return out


def report(results: dict) -> str:
    """Markdown tables of ``results["summary"]``: ratio to the oracle per category and mode."""
    summary = results["summary"]
    lines = []
    for kind in ("category", "mixed"):
        keys = [k for k in summary if k.startswith(kind + "/") and "/all/" not in k and not k.endswith("/oracle")]
        if not keys:
            continue
        methods = sorted({k.split("/")[3] for k in keys})
        modes = [m for m in MODES if any(f"/{m}/" in k for k in keys)]
        title = "per-category libraries" if kind == "category" else "mixed library (all categories)"
        lines += [
            f"### {title}",
            "",
            "chamfer x10^-2 (ratio to the per-axis box oracle: of the means / mean of per-target ratios); floor: a "
            "perfect fit (sampling noise); plausibility: p95 part scale factor / share of parts over 3x",
            "",
        ]
        lines.append("| category | method | floor | oracle | " + " | ".join(modes) + " | p95 / >3x (full) |")
        lines.append("|---" * (5 + len(modes)) + "|")
        for category in (*CATEGORIES, "all"):
            for method in methods:
                cells = []
                for mode in modes:
                    e = summary.get(f"{kind}/{category}/{mode}/{method}")
                    if e is None:
                        cells.append("")
                        continue
                    turned = f", turned/unturned {e['turned_over_unturned']:.2f}" if "turned_over_unturned" in e else ""
                    cells.append(f"{e['chamfer']:.3f} ({e['ratio']:.2f}x / {e['ratio_mean_per_target']:.2f}x{turned})")
                oracle = summary.get(f"{kind}/{category}/all/oracle")
                full = summary.get(f"{kind}/{category}/{modes[0]}/{method}")
                plaus = f"{full['scale_p95_mean']:.2f} / {100 * full['share_over_3x']:.1f}%" if full else ""
                name = f"**{category}**" if category == "all" else category
                lines.append(
                    f"| {name} | {method} | {oracle['floor']:.3f} | {oracle['chamfer']:.3f} | "
                    + " | ".join(cells)
                    + f" | {plaus} |"
                )
        if f"{kind}/all/all/oracle" in summary:
            o = summary[f"{kind}/all/all/oracle"]
            lines.append(
                "| oracle plausibility | | | |"
                + " |" * len(modes)
                + f" {o['scale_p95_mean']:.2f} / {100 * o['share_over_3x']:.1f}% |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-category", type=int, default=100, help="library models per category")
    parser.add_argument("--targets", type=int, default=5, help="targets per category (5: one per family)")
    parser.add_argument(
        "--target-seed", type=int, default=TARGET_SEED, help="seed of the targets (not the library's: 0)"
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--mixed", action="store_true", help="also fit every target in the all-category library")
    parser.add_argument("--fit-options", default="{}", help="JSON of FitOptions fields for the product row")
    parser.add_argument(
        "--tell-viewpoint", action="store_true", help="add a product row told each scan's true scanner direction"
    )
    parser.add_argument("--no-pipeline", action="store_true", help="skip the learning-free pipeline row")
    parser.add_argument("--no-product", action="store_true", help="skip the product row (for diagnostic rows)")
    parser.add_argument(
        "--placement-ranking",
        action="store_true",
        help="add a diagnostic row: every source placed per axis, ranked by the scan objective with the true "
        "viewpoint, top-1 unrefined (placement_ranking_fit)",
    )
    parser.add_argument(
        "--visible-ranking",
        action="store_true",
        help="diagnostic row on unturned scans: every source placed on the true box, ranked by what the scan's "
        "camera sees of it against what it sees of the truth, top-1 (visible_ranking)",
    )
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "ood"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)"
    )
    parser.add_argument("--json", help="write every number here (default: OUT/results-<size>.json)")
    parser.add_argument("--write", help="also write the report into this markdown file (docs/ood.md)")
    parser.add_argument("--report", metavar="JSON", help="only rewrite the report of a saved results JSON")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads(Path(args.report).read_text())
        print(report(results))
        if args.write:
            _write_results(Path(args.write), report(results), results["config"])
        return 0
    try:
        options = FitOptions(**json.loads(args.fit_options))
    except (TypeError, ValueError) as error:
        parser.error(f"--fit-options: {error}")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = Path(args.out)
    indexes = build_libraries(out, args.per_category, mixed=args.mixed)
    fitters = {name: Fitter.open(args.checkpoint, path, device="cpu") for name, path in indexes.items()}
    libraries = {name: load_library(path) for name, path in indexes.items()}
    print(
        f"library ready in {time.perf_counter() - started:.1f} s: "
        + ", ".join(f"{n} {len(lib)}" for n, lib in libraries.items()),
        file=sys.stderr,
    )
    methods = {} if args.no_product else {"product": product_fit(options)}
    if args.tell_viewpoint:
        methods["product_told_viewpoint"] = product_fit(options, tell_viewpoint=True)
    if not args.no_pipeline:
        methods["pipeline"] = pipeline_fit
    if args.placement_ranking:
        methods["placement_ranking"] = placement_ranking_fit
    if args.target_seed == LIBRARY_SEED:
        parser.error(f"--target-seed {LIBRARY_SEED} is the library's seed: its targets would be in the library")
    targets = make_targets(args.targets, args.target_seed)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    results = evaluate(fitters, libraries, targets, methods, tuple(args.modes), log=log, visible=args.visible_ranking)
    seconds = time.perf_counter() - started
    results["config"] = {
        "command": "python bench/ood.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "per_category": args.per_category,
        "targets_per_category": args.targets,
        "modes": args.modes,
        "fit_options": options.__dict__,
        "tell_viewpoint": args.tell_viewpoint,
        "checkpoint": args.checkpoint,
        "checkpoint_id": checkpoint_id(args.checkpoint),
        "code": _code_version(),
        "seconds": seconds,
        "library_seed": LIBRARY_SEED,
        "target_seed": args.target_seed,
        "truth_points": TRUTH_POINTS,
        "cloud_points": CLOUD_POINTS,
    }
    markdown = report(results)
    print(markdown)
    print(f"{seconds:.0f} s in all", file=sys.stderr)
    name = f"results-{args.per_category}-{args.targets}" + ("-mixed" if args.mixed else "")
    json_path = Path(args.json) if args.json else out / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    if args.write:
        _write_results(Path(args.write), markdown, results["config"])
    return 0


def _code_version() -> str:
    """The commit measured, and whether backend/ or training/ had uncommitted changes (another session's work)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "backend", "training")
    return git("rev-parse", "--short", "HEAD") + (" with uncommitted changes in backend/ or training/" if dirty else "")


RESULTS_START, RESULTS_END = "<!-- ood-results -->", "<!-- /ood-results -->"


def _write_results(path: Path, markdown: str, config: dict) -> None:
    """Replace the results block of ``path`` (between the markers), keeping the rest of the document."""
    block = (
        f"{RESULTS_START}\nCommand: `{config['command']}` ({config['seconds']:.0f} s, "
        f"{time.strftime('%Y-%m-%d')}, code {config['code']}, checkpoint {config['checkpoint_id']}, "
        f"FitOptions {config['fit_options']})\n\n{markdown.strip()}\n{RESULTS_END}"
    )
    text = path.read_text() if path.exists() else "# Out-of-distribution check\n\n"
    if RESULTS_START in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
