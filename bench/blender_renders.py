"""Image fits on pictures nobody here rendered: out-of-distribution furniture rendered by Blender itself.

    .venv/bin/python bench/blender_renders.py [--per-category 100] [--targets 5] [--samples 16]
        [--out bench/out/images] [--write docs/images.md]

Targets are ``training.data.ood`` shapes (the second, independent generator, target seed) rendered by Blender's
Cycles (``bpy``): plain grey principled material, a sun and a white world, 256 x 256, 3/4 view (azimuth 20-60
degrees either side), elevation 20-35, a 50 mm lens; none of it is our rasteriser. The library is bench/ood.py's
mixed OOD library (every category: an image does not say which). Every fit is measured with bench/ood.py's metric
(``dense_chamfer`` x10^-2 on coordinates divided by the true box diagonal); an image has no 3D frame, so image fits
are placed on the true shape's box with one uniform scale (centre and diagonal), their proportions their own.

Rows: image top-1 by silhouettes (``backend.silhouettes.match_image``: IoU ranking of every source, the shortlist
re-ranked by mask distance, view and proportions, the best eight stretched ordered with their interior edges),
the same source without the proportions, the IoU ranking's top-1 alone (no re-ranking, own proportions), the
ranking oracle (the library model closest in 3D with its own proportions,
placed the same way: the best any ranking can do without proportions), ``Fitter.fit_image`` as it stands, the
product's point-cloud top-1 on the full cloud (``Fitter.fit_points``), and the per-axis box oracle (bench/ood.py
``per_axis_oracle``).

Renders are cached in ``--out`` (``<target>.png`` beside ``<target>.json`` naming the camera, samples and size; a
changed setting renders again); per-target rows go to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ood import (  # noqa: E402
    COARSE_SOURCE,
    COARSE_TRUTH,
    Fit,
    build_libraries,
    dense_chamfer,
    fitted_surface,
    load_library,
    make_target,
    per_axis_oracle,
    product_fit,
)

from backend.fitting import DEFAULT_CHECKPOINT, FitOptions, Fitter  # noqa: E402
from backend.model.geometry import chamfer_distance  # noqa: E402
from backend.render import Camera  # noqa: E402
from backend.silhouettes import SilhouetteBank, match_image  # noqa: E402
from training.data.ood import CATEGORIES, generate  # noqa: E402

LENS_FOV = float(np.degrees(2 * np.arctan(18 / 50)))  # 50 mm on a 36 mm square sensor


def render_blender(parts: dict, camera: Camera, path: Path, size: int = 256, samples: int = 16) -> np.ndarray:
    """(size, size, 3) uint8 Cycles render of ``parts`` (name -> trimesh, Z up, metres) from ``camera``."""
    import bpy
    from mathutils import Matrix
    from PIL import Image

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    material = bpy.data.materials.new("grey")
    material.use_nodes = True
    shader = material.node_tree.nodes.get("Principled BSDF")
    shader.inputs["Base Color"].default_value = (0.3, 0.3, 0.3, 1.0)
    shader.inputs["Roughness"].default_value = 0.6
    vertices = []
    for name, mesh in parts.items():
        data = bpy.data.meshes.new(name)
        data.from_pydata(mesh.vertices.tolist(), [], mesh.faces.tolist())
        data.materials.append(material)
        scene.collection.objects.link(bpy.data.objects.new(name, data))
        vertices.append(mesh.vertices)
    every = np.concatenate(vertices)
    lo, hi = every.min(axis=0), every.max(axis=0)
    rotation, eye, _ = camera.view((lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2))
    lens = bpy.data.cameras.new("camera")
    lens.sensor_fit = "VERTICAL"
    lens.angle = np.radians(camera.fov)
    view = bpy.data.objects.new("camera", lens)
    world_from_camera = np.eye(4)
    world_from_camera[:3, 0], world_from_camera[:3, 1], world_from_camera[:3, 2] = (
        rotation[0],
        rotation[1],
        -rotation[2],
    )
    world_from_camera[:3, 3] = eye
    view.matrix_world = Matrix(world_from_camera.tolist())
    scene.collection.objects.link(view)
    scene.camera = view
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 1.5
    sun.rotation_euler = (np.radians(40), np.radians(-25), np.radians(30))
    scene.collection.objects.link(sun)
    scene.world = bpy.data.worlds.new("white")
    scene.world.use_nodes = True
    scene.world.node_tree.nodes["Background"].inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
    scene.render.engine = "CYCLES"
    scene.cycles.samples = samples
    scene.cycles.device = "CPU"
    scene.view_settings.view_transform = "Standard"
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    return np.asarray(Image.open(path).convert("RGB"))


def cached_render(parts: dict, camera: Camera, path: Path, samples: int, size: int = 256) -> np.ndarray:
    """``render_blender`` once: reused while ``path``'s sidecar JSON names the same camera, samples and size."""
    from PIL import Image

    settings = {"camera": [camera.azimuth, camera.elevation, camera.fov], "samples": samples, "size": size}
    sidecar = path.with_suffix(".json")
    if path.exists() and sidecar.exists() and json.loads(sidecar.read_text()) == settings:
        return np.asarray(Image.open(path).convert("RGB"))
    image = render_blender(parts, camera, path, size, samples)
    sidecar.write_text(json.dumps(settings))
    return image


def ranking_oracle(library, target, boxes: torch.Tensor, shortlist: int = 15) -> tuple[float, int]:
    """The library model closest in 3D to ``target`` with its own proportions, placed as the image fits are
    (``placed_on_box``): coarse chamfer of every source to rank, the ``shortlist`` best measured densely.
    ``boxes`` (S, K, 6): every source's normalised part boxes. Returns (chamfer x100, row)."""
    lo, hi = library.bounds[:, 0:1], library.bounds[:, 1:2]
    size = (hi - lo).norm(dim=-1, keepdim=True)
    bounds = torch.from_numpy(target.bounds)
    points = (library.points[:, :COARSE_SOURCE] - (lo + hi) / 2) / size * target.diagonal + bounds.mean(0)
    truth = torch.from_numpy(target.truth[:COARSE_TRUTH] / target.diagonal).float()
    coarse = chamfer_distance((points / target.diagonal).float(), truth.expand(len(library), -1, -1))
    best = (float("inf"), -1)
    for row in torch.argsort(coarse)[:shortlist].tolist():
        k = int(library.n_parts[row])
        fit = Fit(row, placed_on_box(boxes[row, :k].double().numpy(), target.bounds))
        best = min(best, (dense_chamfer(fitted_surface(library, fit), target.truth, target.diagonal), row))
    return best


def placed_on_box(boxes: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(K, 6) part boxes moved and scaled uniformly so their union's centre and diagonal are those of ``bounds``."""
    lo, hi = (boxes[:, :3] - boxes[:, 3:]).min(axis=0), (boxes[:, :3] + boxes[:, 3:]).max(axis=0)
    scale = np.linalg.norm(bounds[1] - bounds[0]) / max(np.linalg.norm(hi - lo), 1e-12)
    centre = (boxes[:, :3] - (lo + hi) / 2) * scale + bounds.mean(axis=0)
    return np.concatenate([centre, boxes[:, 3:] * scale], axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-category", type=int, default=100)
    parser.add_argument("--targets", type=int, default=5, help="per category")
    parser.add_argument("--first", type=int, default=0, help="first target per category (another set: 5, 10, ...)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--ood-out", default=str(ROOT / "bench" / "out" / "ood"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "images"))
    parser.add_argument("--write", help="write the markdown report here (e.g. docs/images.md)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index_dir = build_libraries(Path(args.ood_out), args.per_category, mixed=True)["mixed"]
    library = load_library(index_dir)
    fitter = Fitter.open(args.checkpoint, index_dir, device="cpu")
    started = time.perf_counter()
    bank = SilhouetteBank.cached(fitter.sources.points, out)
    print(f"silhouettes of {len(bank)} sources: {time.perf_counter() - started:.1f} s", flush=True)
    points_fit = product_fit(FitOptions())
    rng = np.random.default_rng(15 if args.first == 0 else [15, args.first])  # first 0: the documented set
    rows = []
    for category in CATEGORIES:
        for i in range(args.first, args.first + args.targets):
            target = make_target(category, i)
            shape = generate(category, 1, i)
            side = rng.choice([-1.0, 1.0])
            camera = Camera(side * rng.uniform(20, 60), rng.uniform(20, 35), fov=LENS_FOV)
            image = cached_render(shape.parts, camera, out / f"{category}_{i:02d}.png", args.samples)

            def measured(row: int, boxes: np.ndarray, target=target) -> float:
                fit = Fit(row, placed_on_box(boxes, target.bounds))
                return dense_chamfer(fitted_surface(library, fit), target.truth, target.diagonal)

            match = match_image(image, fitter.sources, bank, top_k=1)
            row = int(match.order[0])
            k = int(library.n_parts[row])
            stretched = match.boxes[0, :k].double().numpy()
            plain = fitter.sources.boxes[row, :k].double().numpy()
            by_iou = int(match.ranking.order()[0])
            k_iou = int(library.n_parts[by_iou])
            best_shape, best_row = ranking_oracle(library, target, fitter.sources.boxes)
            fit_started = time.perf_counter()
            fitted = fitter.fit_image(image)
            fit_seconds = time.perf_counter() - fit_started
            learned = fitted.candidates[0]
            by_points = points_fit(fitter, target.clouds["full"])
            oracle, _ = per_axis_oracle(library, target.truth, target.bounds)
            result = {
                "target": f"{category}_{i:02d}",
                "family": target.family,
                "camera": [camera.azimuth, camera.elevation],
                "view_estimate": [match.azimuth, match.elevation],
                "silhouettes": measured(row, stretched),
                "silhouettes_no_proportions": measured(row, plain),
                "iou_top1": measured(by_iou, fitter.sources.boxes[by_iou, :k_iou].double().numpy()),
                "ranking_oracle": best_shape,
                "fit_image": measured(learned.source_index, learned.fitted_boxes),
                "points": dense_chamfer(fitted_surface(library, by_points), target.truth, target.diagonal),
                "oracle": float(oracle.min()),
                "retrieved": library.paths[row],
                "closest_shape": library.paths[best_row],
                "closest_shape_rank": int((match.ranking.order() == best_row).nonzero()[0, 0]),
                "fit_image_view": fitted.view,
                "fit_image_seconds": fit_seconds,
            }
            rows.append(result)
            print(json.dumps(result), flush=True)
    names = ("silhouettes", "silhouettes_no_proportions", "iou_top1", "ranking_oracle", "fit_image", "points", "oracle")
    means = {n: float(np.mean([r[n] for r in rows])) for n in names}
    same_category = np.mean([r["retrieved"].split("/")[0] == r["target"].split("_")[0] for r in rows])
    view_ok = np.mean(
        [
            abs((r["view_estimate"][0] - r["camera"][0] + 180) % 360 - 180) <= 15
            and abs(r["view_estimate"][1] - r["camera"][1]) <= 15
            for r in rows
        ]
    )
    lines = [
        "| fit | chamfer x10^-2 (mean) | / per-axis box oracle | / point top-1 |",
        "|---|---|---|---|",
    ]
    labels = {
        "silhouettes": "image top-1, `match_image` (IoU, mask distance, view, proportions, interior edges)",
        "silhouettes_no_proportions": "same source, its own proportions",
        "iou_top1": "IoU ranking's top-1 alone, own proportions (no re-ranking)",
        "ranking_oracle": "ranking oracle: the closest library shape in 3D, own proportions",
        "fit_image": "`Fitter.fit_image` at the time of the run",
        "points": "point-cloud top-1 (full cloud, `Fitter.fit_points`)",
        "oracle": "per-axis box oracle",
    }
    for n in names:
        lines.append(
            f"| {labels[n]} | {means[n]:.3f} | {means[n] / means['oracle']:.2f}x | {means[n] / means['points']:.2f}x |"
        )
    summary = "\n".join(lines) + (
        f"\n\nSilhouette top-1 of the target's category: {same_category:.0%}; view estimate within one grid step "
        f"(15 degrees) of the camera: {view_ok:.0%} ({len(rows)} targets). Closest library shape's place in the "
        f"IoU ranking: median {np.median([r['closest_shape_rank'] for r in rows]):.0f}, worst "
        f"{max(r['closest_shape_rank'] for r in rows)}. `Fitter.fit_image` median "
        f"{np.median([r['fit_image_seconds'] for r in rows]):.2f} s (300 sources, bank loaded)."
    )
    print(summary)
    results = out / ("results.json" if args.first == 0 else f"results-from-{args.first}.json")
    results.write_text(json.dumps({"rows": rows, "means": means}, indent=1))
    if args.write:
        Path(args.write).write_text(summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
