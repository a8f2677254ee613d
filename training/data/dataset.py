"""Writing data sets of generated furniture to disk, as ordinary files.

Layout of a data set folder::

    meta.json                          seed, counts, and one row per shape
    {train,test}/<category>/<name>.glb one node per part (goes through the same
                                       indexing path as a user's library)
    images/<name>_<view>.png           rendered views (optional)
    points/<name>.npy                  full surface samples, float32 (optional)

The split is a function of (seed, category, index) alone, so growing a data
set never moves a shape from test to train.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.export import write_glb
from training.data.furniture import CATEGORIES, generate
from training.data.views import full_cloud, render_image


@dataclass(frozen=True)
class DatasetSpec:
    per_category: int
    seed: int = 0
    test_fraction: float = 0.2
    views: int = 0
    image_size: int = 128
    points: int = 0
    categories: tuple[str, ...] = CATEGORIES


def split_of(seed: int, category: str, index: int, test_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}/{category}/{index}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "little") / 2**64 < test_fraction else "train"


def write_shape(out: Path, spec: DatasetSpec, category: str, index: int) -> dict:
    """Generate and write one shape with its views; returns its meta row."""
    shape = generate(category, spec.seed, index)
    split = split_of(spec.seed, category, index, spec.test_fraction)
    name = f"{category}_{index:05d}"
    glb = write_glb(shape, out / split / category / f"{name}.glb")
    rng = np.random.default_rng([spec.seed, 1 + len(CATEGORIES), CATEGORIES.index(category), index])
    if spec.views:
        _write_images(out, shape, name, rng, spec.views, spec.image_size)
    if spec.points:
        (out / "points").mkdir(exist_ok=True)
        np.save(out / "points" / f"{name}.npy", full_cloud(shape, spec.points, rng))
    return {
        "name": name,
        "path": glb.relative_to(out).as_posix(),
        "category": category,
        "index": index,
        "split": split,
        "structure": shape.structure,
        "n_parts": len(shape.parts),
        "contacts": sorted(sorted(pair) for pair in shape.contacts),
    }


def _write_images(out: Path, shape, name: str, rng: np.random.Generator, views: int, image_size: int) -> None:
    """``views`` renders of ``shape`` as ``out/images/<name>_<view>.png`` (every other one on a random
    background), drawn from ``rng`` (the shape's own generator, views first)."""
    from PIL import Image

    (out / "images").mkdir(exist_ok=True)
    for view in range(views):
        image = render_image(shape, rng, size=image_size, random_background=view % 2 == 1)
        Image.fromarray(image).save(out / "images" / f"{name}_{view}.png", optimize=False)


def write_views(out: Path, names: list[str], views: int = 2) -> int:
    """Render the views of already written shapes (``<category>_<index>`` names of ``out/meta.json``) into
    ``out/images``, the same images ``write_shape`` writes with ``views`` (its generator seed, image size and
    random draws: the views are drawn first), without writing the meshes again. Returns how many were written."""
    spec = json.loads((out / "meta.json").read_text())["spec"]
    for name in names:
        category, index = name.rsplit("_", 1)
        shape = generate(category, spec["seed"], int(index))
        rng = np.random.default_rng([spec["seed"], 1 + len(CATEGORIES), CATEGORIES.index(category), int(index)])
        _write_images(out, shape, name, rng, views, int(spec.get("image_size", 128)))
    return len(names) * views


def _write_star(args) -> dict:
    return write_shape(*args)


def write_dataset(
    out: Path, spec: DatasetSpec, jobs: int = 1, progress: Callable[[int, int], None] | None = None
) -> dict:
    """Write a whole data set and its ``meta.json``; returns the meta dict."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(out, spec, category, i) for category in spec.categories for i in range(spec.per_category)]
    rows = []
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for row in pool.map(_write_star, tasks, chunksize=8):
                rows.append(row)
                if progress:
                    progress(len(rows), len(tasks))
    else:
        for task in tasks:
            rows.append(_write_star(task))
            if progress:
                progress(len(rows), len(tasks))
    meta = {
        "generator": "training.data.furniture",
        "spec": spec.__dict__ | {"categories": list(spec.categories)},
        "shapes": rows,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta
