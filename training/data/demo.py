"""The embedded demo library: a small fixed set of shapes and targets.

Shipped inside ``backend/demo`` so the README's main command works on a
fresh machine without the training code. Regenerate with
``python -m training.data demo``; the output is byte-identical each time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backend.render import Camera
from training.data.export import write_glb
from training.data.furniture import CATEGORIES, generate
from training.data.views import full_cloud, partial_cloud, render_image

DEMO_SEED = 20260101
TARGET_SEED = 20260102  # targets are not in the library
PER_CATEGORY = 20


def write_demo(out: Path) -> dict:
    """Write ``out/library/<category>/*.glb`` and ``out/targets/*``; returns counts."""
    from PIL import Image

    library = out / "library"
    for category in CATEGORIES:
        for i in range(PER_CATEGORY):
            write_glb(generate(category, DEMO_SEED, i), library / category / f"{category}_{i:02d}.glb")
    targets = out / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(TARGET_SEED)
    chair, table, storage = (generate(c, TARGET_SEED, 0) for c in CATEGORIES)
    np.save(targets / "chair_full.npy", full_cloud(chair, 4096, rng, noise=0.002))
    np.save(
        targets / "table_partial.npy",
        partial_cloud(table, 4096, rng, camera=Camera(azimuth=25, elevation=30), noise=0.002),
    )
    np.save(targets / "storage_full.npy", full_cloud(storage, 4096, rng))
    for name, shape, camera in (
        ("chair", chair, Camera(azimuth=30, elevation=20)),
        ("storage", storage, Camera(azimuth=-25, elevation=15)),
    ):
        Image.fromarray(render_image(shape, rng, size=256, camera=camera)).save(targets / f"{name}.png", optimize=False)
    return {"library": PER_CATEGORY * len(CATEGORIES), "targets": len(list(targets.iterdir()))}
