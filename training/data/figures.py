"""Figures of the generator for docs/: contact sheet and part counts."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from backend.render import Camera
from training.data.furniture import CATEGORIES, generate
from training.data.views import render_image


def contact_sheet(seed: int, columns: int = 8, rows: int = 3, size: int = 128) -> np.ndarray:
    """(rows * 3 * size, columns * size, 3) uint8: ``rows`` rows of shapes per category."""
    bands = []
    for category in CATEGORIES:
        for r in range(rows):
            tiles = []
            for c in range(columns):
                i = r * columns + c
                shape = generate(category, seed, i)
                rng = np.random.default_rng(i)
                tiles.append(
                    render_image(shape, rng, size=size, camera=Camera(azimuth=rng.uniform(-45, 45), elevation=20))
                )
            bands.append(np.concatenate(tiles, axis=1))
    return np.concatenate(bands, axis=0)


def write_figures(out: Path, per_category: int = 500, seed: int = 0) -> list[Path]:
    """Write ``generator_contact_sheet.png``, ``generator_part_counts.png`` and
    ``generator.md`` (the same numbers as a table) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    sheet = out / "generator_contact_sheet.png"
    Image.fromarray(contact_sheet(seed)).save(sheet)

    counts = {c: collections.Counter() for c in CATEGORIES}
    structures = {c: collections.Counter() for c in CATEGORIES}
    for category in CATEGORIES:
        for i in range(per_category):
            shape = generate(category, seed, i)
            counts[category][shape.n_parts] += 1
            structures[category][shape.structure.split("/")[1]] += 1
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
    bins = np.arange(1, 18)
    for ax, category in zip(axes, CATEGORIES):
        ax.bar(bins, [counts[category][b] for b in bins], color="#4477aa")
        ax.set_title(f"{category} ({per_category} shapes)")
        ax.set_xlabel("parts (excluding handles and casters)")
        ax.set_xticks(range(2, 17, 2))
    axes[0].set_ylabel("shapes")
    fig.tight_layout()
    histogram = out / "generator_part_counts.png"
    fig.savefig(histogram, dpi=100)
    plt.close(fig)

    lines = [
        "# Procedural furniture generator",
        "",
        f"Regenerate: `python -m training.data figures --out docs --per-category {per_category} --seed {seed}`",
        "",
        "![contact sheet](generator_contact_sheet.png)",
        "",
        "![part counts](generator_part_counts.png)",
        "",
        "| category | shapes | parts min | parts median | parts max | distinct structures | base types |",
        "|---|---|---|---|---|---|---|",
    ]
    for category in CATEGORIES:
        values = np.repeat(list(counts[category]), list(counts[category].values()))
        distinct = len({generate(category, seed, i).structure for i in range(min(per_category, 200))})
        bases = ", ".join(f"{k} {v}" for k, v in structures[category].most_common())
        lines.append(
            f"| {category} | {per_category} | {values.min()} | {int(np.median(values))} | {values.max()} "
            f"| {distinct} (of first 200) | {bases} |"
        )
    report = out / "generator.md"
    report.write_text("\n".join(lines) + "\n")
    return [sheet, histogram, report]
