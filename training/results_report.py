"""docs/results.md from the evaluation's numbers: Tables 1 and 2 in the
paper's layout, the computed verdict, and a bar chart per modality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.data.furniture import CATEGORIES

TABLE1 = ("R", "R+DF", "DAR", "DAR+DF", "Uniform", "Ours", "Ours+IDO", "Pipeline")
# Table 2's rows: (results key, label); the pipeline's "deformation" is the per-axis placement.
TABLE2 = (("DAR+DF", "DF"), ("Uniform", "Uniform"), ("Ours", "Ours"), ("Pipeline", "Per-axis placement"))


def _cell(values: list[float]) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or not np.all(np.isfinite(values)):
        return "–"
    return f"{values.mean():.3f}" if len(values) == 1 else f"{values.mean():.3f} ± {values.std():.3f}"


def summarise(results: dict, key: str, metric: str, mask: np.ndarray) -> list[float]:
    """Per-seed mean of ``metric`` over the targets in ``mask``."""
    return [
        float(np.mean(np.asarray(seed[key][metric])[mask]))
        for seed in results["seeds"].values()
        if key in seed and metric in seed[key] and mask.any()
    ]


def write_report(results: dict, docs: Path) -> Path:
    """``docs/results.md`` in the paper's layout, and a bar chart per modality."""
    categories = np.asarray(results["categories"])
    unseen = np.asarray(results["unseen_structure"])
    modalities = sorted({key.split("/")[0] for seed in results["seeds"].values() for key in seed})
    config = results["config"]
    lines = [
        "# Results: joint retrieval and deformation on procedural furniture",
        "",
        f"Command: `python -m training.evaluate --config ...` with `{json.dumps(config)}`; "
        f"wall time per seed (training every method and evaluating it): "
        + ", ".join(f"seed {k}: {v / 60:.0f} min" for k, v in results.get("seed_seconds", {}).items())
        + ". Chamfer distance x10^-2 (squared distances, mean per direction, "
        "summed) on shapes normalised to a unit box diagonal; held-out test targets; seeds: "
        + ", ".join(results["seeds"])
        + " (mean ± std over seeds).",
        "",
    ]
    for modality in modalities:
        lines += [
            f"## Table 1 ({modality} targets): top-1 retrieved and deformed",
            "",
            "| method | " + " | ".join(CATEGORIES) + " | all | best of top-10 (all) |",
            "|---|" + "---|" * (len(CATEGORIES) + 2),
        ]
        for method in TABLE1:
            key = f"{modality}/{method}"
            if not any(key in seed for seed in results["seeds"].values()):
                continue
            cells = [_cell(summarise(results, key, "top1", categories == c)) for c in CATEGORIES]
            every = np.ones(len(categories), bool)
            lines.append(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {_cell(summarise(results, key, 'top1', every))}"
                + f" | {_cell(summarise(results, key, 'top10', every))} |"
            )
        lines += [
            "",
            f"## Table 2 ({modality} targets): oracle retrieval (best source after deformation)",
            "",
            "| deformation | " + " | ".join(CATEGORIES) + " | recall@1 | recall@5 | recall@10 |",
            "|---|" + "---|" * (len(CATEGORIES) + 3),
        ]
        for method, label in TABLE2:
            key = f"{modality}/{method}"
            if not any(key in seed for seed in results["seeds"].values()):
                continue
            cells = [_cell(summarise(results, key, "oracle", categories == c)) for c in CATEGORIES]
            recalls = [_cell([seed[key]["recall"][str(k)] for seed in results["seeds"].values()]) for k in (1, 5, 10)]
            lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(recalls) + " |")
        if unseen.any():
            lines += [
                "",
                f"Generalisation ({modality}): {int(unseen.sum())} test targets have a part structure "
                "that no training shape has:",
                "",
            ]
            lines += [
                f"- {method}: {_cell(summarise(results, f'{modality}/{method}', 'top1', unseen))} "
                f"(seen structures: {_cell(summarise(results, f'{modality}/{method}', 'top1', ~unseen))})"
                for method in ("R+DF", "DAR+DF", "Ours")
                if any(f"{modality}/{method}" in s for s in results["seeds"].values())
            ]
        lines.append("")
    lines += verdict(results, modalities, categories)
    if (docs / "results_examples.png").exists():
        lines += [
            "## Examples (seed " + next(iter(results["seeds"])) + ")",
            "",
            "One test target per category drawn at random; chamfer x10^-2 above each deformed result; "
            "parts coloured by index. These are the methods' own outputs (the network's deformation, as in the "
            "paper); the product's default fit on shapes our generator did not make, each titled with its largest "
            "part scale factor, is [docs/ood_examples.png](ood_examples.png) (`bench/ood_examples.py`).",
            "",
            "![examples](results_examples.png)",
            "",
        ]
    lines += [
        "![points](results_points.png)",
        "",
        "![images](results_images.png)" if "images" in modalities else "",
        "",
    ]
    notes = Path(config.get("notes") or "")
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    docs.mkdir(parents=True, exist_ok=True)
    report = docs / "results.md"
    report.write_text("\n".join(lines) + "\n")
    _plot(results, docs, modalities, categories)
    return report


def verdict(results: dict, modalities: list[str], categories: np.ndarray) -> list[str]:
    """Where Ours (top-1, mean over seeds) beats each baseline, counted over
    the category and "all" columns of Table 1; and Table 2's oracle."""
    columns = [(c, categories == c) for c in CATEGORIES] + [("all", np.ones(len(categories), bool))]
    mean = lambda key, metric, mask: float(np.mean(summarise(results, key, metric, mask) or [np.nan]))  # noqa: E731
    lines = ["## Does joint training win? (computed from the tables above)", ""]
    for baseline in ("R", "R+DF", "DAR+DF", "Uniform", "Pipeline"):
        wins, total, losses = 0, 0, []
        for modality in modalities:
            for name, mask in columns:
                ours, other = mean(f"{modality}/Ours", "top1", mask), mean(f"{modality}/{baseline}", "top1", mask)
                if np.isfinite(ours) and np.isfinite(other):
                    total += 1
                    wins += ours < other
                    if ours >= other:
                        losses.append(f"{modality}/{name}")
        if total:
            lines.append(
                f"- Ours vs {baseline}: lower error in {wins} of {total} columns"
                + (f" (not in: {', '.join(losses)})" if losses else "")
            )
    for baseline, key in (("DF", "DAR+DF"), ("Uniform", "Uniform")):
        wins, total = 0, 0
        for modality in modalities:
            for _name, mask in columns[:-1]:
                ours, other = mean(f"{modality}/Ours", "oracle", mask), mean(f"{modality}/{key}", "oracle", mask)
                if np.isfinite(ours) and np.isfinite(other):
                    total, wins = total + 1, wins + (ours < other)
        if total:
            lines.append(
                f"- Table 2, Ours' deformation vs {baseline}'s with oracle retrieval: "
                f"lower error in {wins} of {total} columns"
            )
    return lines + [""]


def _plot(results: dict, docs: Path, modalities: list[str], categories: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for modality in modalities:
        methods = [m for m in TABLE1 if any(f"{modality}/{m}" in s for s in results["seeds"].values())]
        fig, ax = plt.subplots(figsize=(9, 3.5))
        width = 0.8 / max(1, len(methods))
        for i, method in enumerate(methods):
            means = [np.mean(summarise(results, f"{modality}/{method}", "top1", categories == c)) for c in CATEGORIES]
            ax.bar(np.arange(len(CATEGORIES)) + i * width, means, width, label=method)
        ax.set_xticks(np.arange(len(CATEGORIES)) + width * (len(methods) - 1) / 2, CATEGORIES)
        ax.set_ylabel("chamfer x1e-2 (lower is better)")
        ax.set_title(f"{modality} targets: top-1 retrieved and deformed")
        ax.legend(fontsize=8, ncol=4)
        fig.tight_layout()
        fig.savefig(docs / f"results_{modality}.png", dpi=100)
        plt.close(fig)
