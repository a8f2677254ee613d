"""Variants of the image fit measured on the Blender renders (docs/images.md): the shipped one and those not kept.

    .venv/bin/python bench/image_variants.py [--first 0] [--variants baseline refine refine_z soft hypotheses edges]

Each variant replaces ``match_image``'s top-1 for the renders of bench/blender_renders.py (run that first: it
renders and caches the targets and writes the oracle per target), measured as that bench measures it (bench/ood.py
``dense_chamfer`` x10^-2, placed on the true box with one uniform scale). ``--first``: 0 is set A, 5 set B, 10 set
C, 15 set D, 20 set E (all tuned on by round 2) and 25 set F (rendered once in round 2, held out). All of them but
``edges`` and ``polish`` without the interior edges (``edge_weight=0``). The refinements start from ``baseline``'s
top-1, as they were measured.

- ``refine``: the top-1's part boxes refined in image space (``refine_to_image``): Adam in the connectivity
  subspace, with the symmetry error, the half-size barrier and ``size_penalty``, on the distance of projected
  samples to the mask (its distance transform) plus the distance of mask cells to the nearest sample, 64 x 64, 512
  samples, 60 steps; ``refine_z`` moves only the vertical coordinates (heights of legs, seats, shelves) with an
  anchor; ``soft``: a soft silhouette (a Gaussian per sample) against the mask at 48 x 48, 2,048 samples.
- ``baseline``: ``match_image`` with one view (``hypotheses=1``: the method before view hypotheses).
  ``hypotheses``: the method of commit 78c9735 (``rerank``): the view not fixed by the IoU consensus before
  re-ranking: the three best front-half consensus views (one grid step apart at least, within 0.05 of the best)
  each shortlist 20 sources, and the mask distance at 48 x 48 chooses among all of them, another view's sources
  charged ``SWITCH_MARGIN`` (0.0005) more; ``hypotheses@M`` charges M instead (``hypotheses@0``: no tie-break).
- ``edges``: ``match_image`` as shipped: ``hypotheses``, then the best ``EDGE_CHOICE`` stretched candidates ordered
  by mask distance plus ``EDGE_WEIGHT`` times the distance of their box renders' interior edges to the image's,
  all but the first charged ``EDGE_MARGIN``; ``edges@W``, ``edges@W,M`` and ``edges@W,M,K`` set the weight, the
  margin and the number of candidates (``edges@0``: ``hypotheses``).

Each variant prints its mean, its ratio to the per-axis box oracle and how close its views' azimuths are to the
cameras' (within 15 and 30 degrees; the wrong ones' left/right and front/back mirror views), and writes its rows to
``bench/out/images/variants-from-<first>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import blender_renders as renders  # noqa: E402
from ood import Fit, build_libraries, dense_chamfer, fitted_surface, load_library, make_target  # noqa: E402

from backend.fitting import DEFAULT_CHECKPOINT, Fitter  # noqa: E402
from backend.model.geometry import box_symmetry_loss, deform_points, project_positive  # noqa: E402
from backend.model.plausibility import size_penalty  # noqa: E402
from backend.model.sources import SourceTensors  # noqa: E402
from backend.render import Camera  # noqa: E402
from backend.silhouettes import (  # noqa: E402
    EDGE_CHOICE,
    EDGE_MARGIN,
    EDGE_WEIGHT,
    PROPORTION_RESOLUTION,
    SWITCH_MARGIN,
    VIEW_HYPOTHESES,
    SilhouetteBank,
    box_aligned,
    foreground_mask,
    mask_grid,
    match_image,
    project,
    scale_boxes,
    stretched_distance,
)
from training.data.ood import CATEGORIES, generate  # noqa: E402


def image_loss(points: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor, soft: bool) -> torch.Tensor:
    """(P,) how far P candidates' projected ``points`` (P, N, 3) from ``angles`` (P, 2) are from ``mask`` (R, R):
    mean distance (cells) of samples to the mask plus of mask cells to the nearest sample, or with ``soft`` 100
    times the mean squared difference of a soft silhouette (a Gaussian of 0.6 cells per sample)."""
    r = mask.shape[-1]
    xy = box_aligned(project(points, angles[:, None].to(points))[:, 0], r)  # (P, N, 2) column, row
    axis = torch.arange(r, dtype=points.dtype) + 0.5
    if soft:
        cells = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
        g = torch.exp(-torch.cdist(cells.expand(len(points), -1, -1), xy).square() / (2 * 0.6**2))
        silhouette = 1 - torch.exp(torch.log1p(-g.clamp_max(1 - 1e-6)).sum(-1))
        return 100 * (silhouette - mask.reshape(1, -1).to(points)).square().mean(-1)
    outside = torch.from_numpy(ndimage.distance_transform_edt(~mask.numpy()).astype(np.float32)).to(points)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    centres = torch.stack([cols, rows], dim=1).to(points) + 0.5
    where = (xy / r * 2 - 1).unsqueeze(1)
    away = F.grid_sample(outside.expand(len(points), 1, r, r), where, padding_mode="border", align_corners=False)
    away = away[:, 0, 0]
    cover = torch.cdist(centres.expand(len(points), -1, -1), xy).min(dim=2).values
    return away.mean(1) + cover.mean(1)


def refine_to_image(
    sources: SourceTensors,
    boxes: torch.Tensor,
    angles: torch.Tensor,
    mask: np.ndarray,
    steps: int = 60,
    points: int = 512,
    resolution: int = 64,
    vertical_only: bool = False,
    anchor: float = 0.0,
    soft: bool = False,
) -> torch.Tensor:
    """(P, K, 6) ``boxes`` of P candidates (``sources``: their rows; normalised frame) refined against the image's
    ``mask`` from ``angles`` (P, 2), as ``backend.model.refinement.refine_boxes`` refines against a cloud."""
    target = mask_grid(mask, resolution)
    sub = sources.first_points(points)
    basis = sub.basis.to(boxes)
    free = torch.tensor([0, 0, 1, 0, 0, 1] if vertical_only else [1] * 6, dtype=boxes.dtype)
    w = torch.zeros(len(boxes), basis.shape[2], 1, dtype=boxes.dtype, requires_grad=True)
    optimiser = torch.optim.Adam([w], lr=2e-3)
    for _ in range(steps):
        current = boxes + (basis @ w).reshape(boxes.shape) * free
        moved = deform_points(sub.points.to(boxes), sub.labels, sub.boxes.to(boxes), current)
        shortfall = torch.relu(sub.min_half.view(-1, 1, 1).to(boxes) - current[..., 3:]) * sub.part_mask.unsqueeze(-1)
        each = image_loss(moved, angles.to(boxes), target, soft) + 10 * shortfall.square().sum((1, 2))
        each = each + box_symmetry_loss(current, sub.mirror, sub.axis) + size_penalty(current, boxes, sub.part_mask)
        each = each + anchor * (current - boxes).square().sum((1, 2))
        optimiser.zero_grad()
        each.sum().backward()
        optimiser.step()
    with torch.no_grad():
        final = boxes + (basis @ w).reshape(boxes.shape) * free
        return project_positive(final, basis, sub.min_half.to(boxes), sub.part_mask)


def polish_stretch(
    points: torch.Tensor,
    scales: torch.Tensor,
    view: torch.Tensor,
    mask: np.ndarray,
    span: float = 0.12,
    turn: float = 5.0,
    prior: float = 0.002,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One candidate's stretch ``scales`` (3,) and ``view`` (2,) (degrees) searched again against ``mask``: X and Y
    times exp of 5 steps over +-``span``, the azimuth over 5 steps within +-``turn`` degrees; the least
    ``stretched_distance`` at 64 x 64 plus ``prior`` times the squared log of the (unit geometric mean) stretch
    wins, as in ``fit_proportions``. ``points`` (N, 3) the candidate's samples, normalised frame.

    Returns:
        scales (3,) with a unit geometric mean and the view (2,), degrees.
    """
    steps = torch.linspace(-span, span, 5, dtype=torch.float64)
    fx, fy = torch.meshgrid(steps, steps, indexing="ij")
    factor = torch.stack([fx.reshape(-1), fy.reshape(-1), torch.zeros(25, dtype=torch.float64)], dim=1).exp()
    tried = scales.to(torch.float64) * factor  # (G, 3)
    turns = torch.linspace(-turn, turn, 5, dtype=torch.float64)
    views = torch.stack([view[0].double() + turns, view[1].double().expand(5)], dim=1)  # (A, 2)
    score = stretched_distance(points[None], tried[None], views[None], mask_grid(mask, PROPORTION_RESOLUTION))[0]
    score = score.double() + prior * torch.log(tried).square().sum(-1, keepdim=True)  # (G, A)
    best = int(score.argmin())
    chosen = tried[best // len(views)]
    return (chosen / chosen.prod().pow(1 / 3)).to(points), views[best % len(views)].to(points)


def wrapped(degrees: float) -> float:
    """An angle difference in (-180, 180]."""
    return -((-degrees + 180) % 360 - 180)


def view_summary(views: list[tuple[float, float]], cameras: list[tuple[float, float]]) -> str:
    """How close the estimated azimuths are to the cameras': within 15 and 30 degrees, and of the wrong ones
    (over 15) how many are the left/right mirror view (-a) or the front/back mirror view (180 - a or a + 180)."""
    error = [abs(wrapped(v[0] - c[0])) for v, c in zip(views, cameras)]
    wrong = [(v, c) for v, c, e in zip(views, cameras, error) if e > 15]
    sides = sum(abs(wrapped(v[0] + c[0])) <= 15 for v, c in wrong)
    behind = sum(min(abs(wrapped(v[0] - 180 + c[0])), abs(wrapped(v[0] - 180 - c[0]))) <= 15 for v, c in wrong)
    n, high = len(views), sum(abs(v[1] - c[1]) <= 15 for v, c in zip(views, cameras))
    return (
        f"azimuth within 15 deg {sum(e <= 15 for e in error)}/{n}, within 30 deg {sum(e <= 30 for e in error)}/{n}, "
        f"elevation within 15 deg {high}/{n}; "
        f"wrong (over 15) {len(wrong)}: left/right mirror {sides}, front/back mirror {behind}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["baseline", "refine", "refine_z", "soft", "hypotheses", "edges"],
        help="baseline: one view (the IoU consensus); hypotheses[@MARGIN]: the shipped view hypotheses, "
        "the other views' shortlists charged MARGIN (default SWITCH_MARGIN) more mask distance; "
        "edges[@W[,M[,K]]]: the shipped choice by interior edges (weight, margin, candidates); polish: edges, then "
        "the chosen stretch and view searched again; refine, refine_z, soft: image-space refinements (not shipped)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = ROOT / "bench" / "out" / "images"
    index_dir = build_libraries(ROOT / "bench" / "out" / "ood", 100, mixed=True)["mixed"]
    library = load_library(index_dir)
    fitter = Fitter.open(DEFAULT_CHECKPOINT, index_dir, device="cpu")
    sources = fitter.sources
    bank = SilhouetteBank.cached(sources.points, out)
    results = out / ("results.json" if args.first == 0 else f"results-from-{args.first}.json")
    oracle = {r["target"]: r["oracle"] for r in json.loads(results.read_text())["rows"]}
    rng = np.random.default_rng(15 if args.first == 0 else [15, args.first])  # blender_renders.py's cameras
    items = []
    for category in CATEGORIES:
        for i in range(args.first, args.first + args.targets):
            side = rng.choice([-1.0, 1.0])
            camera = Camera(side * rng.uniform(20, 60), rng.uniform(20, 35), fov=renders.LENS_FOV)
            image = renders.cached_render(generate(category, 1, i).parts, camera, out / f"{category}_{i:02d}.png", 16)
            items.append((f"{category}_{i:02d}", make_target(category, i), image, (camera.azimuth, camera.elevation)))

    def top1(variant: str, image: np.ndarray) -> tuple[int, torch.Tensor, tuple[float, float]]:
        """The variant's top-1 source row, its boxes and the view it reports (azimuth, elevation)."""
        mask = foreground_mask(image)
        if variant == "baseline" or variant.startswith("hypotheses"):  # hypotheses[@margin]: the product's views
            margin = float(variant.partition("@")[2] or SWITCH_MARGIN)
            count = 1 if variant == "baseline" else VIEW_HYPOTHESES
            match = match_image(
                image, sources, bank, top_k=1, mask=mask, hypotheses=count, switch_margin=margin, edge_weight=0.0
            )
            return int(match.order[0]), match.boxes[0], (match.azimuth, match.elevation)
        if variant == "polish":
            match = match_image(image, sources, bank, top_k=1, mask=mask)
            chosen = sources.select(match.order[:1])
            scales, view = polish_stretch(chosen.points[0], match.scales[0], match.views[0], mask)
            boxes = scale_boxes(chosen.boxes, chosen.part_mask, scales[None])[0]
            return int(match.order[0]), boxes, (float(view[0]), float(view[1]))
        if variant.startswith("edges"):  # edges[@WEIGHT[,MARGIN[,CHOICE]]]: the shipped choice by interior edges
            given = [float(v) for v in variant.partition("@")[2].split(",") if v]
            weight, margin, choice = given + [EDGE_WEIGHT, EDGE_MARGIN, EDGE_CHOICE][len(given) :]
            match = match_image(
                image,
                sources,
                bank,
                top_k=1,
                mask=mask,
                edge_weight=weight,
                edge_margin=margin,
                edge_choice=int(choice),
            )
            return int(match.order[0]), match.boxes[0], (match.azimuth, match.elevation)
        match = match_image(image, sources, bank, top_k=1, mask=mask, hypotheses=1, edge_weight=0.0)
        chosen = sources.select(match.order[:1])
        options = {"refine": {}, "refine_z": {"vertical_only": True, "anchor": 10.0}}.get(variant)
        if variant == "soft":
            options = {"soft": True, "points": 2048, "resolution": 48}
        refined = refine_to_image(chosen, match.boxes[:1], match.views[:1], mask, **options)
        boxes = scale_boxes(refined, chosen.part_mask, torch.ones(1, 3))[0]
        return int(match.order[0]), boxes, (match.azimuth, match.elevation)

    cameras = [camera for _, _, _, camera in items]
    record = {}
    for variant in args.variants:
        values, views = [], []
        for key, target, image, _ in items:
            row, boxes, view = top1(variant, image)
            k = int(library.n_parts[row])
            fit = Fit(row, renders.placed_on_box(boxes[:k].double().numpy(), target.bounds))
            values.append(dense_chamfer(fitted_surface(library, fit), target.truth, target.diagonal))
            views.append(view)
            print(
                f"  {variant} {key} {values[-1]:.3f} (oracle {oracle[key]:.3f}) {library.paths[row]} view "
                f"{view[0]:.1f}/{view[1]:.1f}",
                flush=True,
            )
        mean, reference = np.mean(values), np.mean([oracle[key] for key, _, _, _ in items])
        print(
            f"{variant} (first {args.first}): mean {mean:.4f}, {mean / reference:.2f}x the per-axis box oracle; "
            f"{view_summary(views, cameras)}",
            flush=True,
        )
        record[variant] = {"chamfer": values, "views": views}
    keys = [key for key, _, _, _ in items]
    rows = {"targets": keys, "cameras": cameras, "oracle": [oracle[k] for k in keys], "variants": record}
    (out / f"variants-from-{args.first}.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
