"""Training curves from a run's ``log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]


def smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_curves(run: Path, out: Path) -> Path:
    """PNG with the training fit per modality, L_emb, and validation chamfer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(run)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for modality, colour in (("points", "#4477aa"), ("images", "#cc6677")):
        fit = [(r["step"], r["fit_x100"]) for r in rows if r.get("modality") == modality and "fit_x100" in r]
        if fit:
            steps, values = np.array(fit).T
            axes[0].plot(steps[: len(smooth(values))], smooth(values), color=colour, label=modality)
    axes[0].set(title="training fit (weighted chamfer x100)", xlabel="step")
    axes[0].legend()
    emb = [(r["step"], r["loss_emb"]) for r in rows if "loss_emb" in r]
    if emb:
        steps, values = np.array(emb).T
        axes[1].plot(steps[: len(smooth(values))], smooth(values), color="#228833")
    axes[1].set(title="L_emb (retrieval updates)", xlabel="step")
    val = [r for r in rows if r.get("phase") == "validation"]
    for key, colour in (("val_points", "#4477aa"), ("val_images", "#cc6677")):
        points = [(r["step"], r[key]) for r in val if key in r]
        if points:
            steps, values = np.array(points).T
            axes[2].plot(steps, values, "o-", color=colour, label=key.replace("val_", ""))
    axes[2].set(title="validation: top-1 retrieved and deformed, chamfer x100", xlabel="step")
    axes[2].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
