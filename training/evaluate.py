"""Reproduce the shape of the paper's Tables 1 and 2 on our procedural data.

    python -m training.evaluate --config training/configs/evaluate.toml

Trains every method with the same data and budget (per seed), evaluates on
the held-out test split (no test shape is a source or a training target),
and writes ``docs/results.md`` with the tables and ``docs/results_*.png``.

Methods: R (MDS retrieval), R+DF, DAR, DAR+DF, Uniform sampling, Ours, Ours
with IDO; oracle retrieval (Table 2) for DF, Uniform and Ours. Besides top-1
we report best-of-top-10 and retrieval recall@k against the oracle.
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.fitting import FitOptions, refine_boxes
from backend.library import build_index, load_index
from backend.model.checkpoint import load_checkpoint
from backend.model.geometry import chamfer_distance, project_positive
from backend.model.networks import JointModel, deformed_points
from backend.model.sources import SourceTensors
from training.baselines import train_mds_retrieval
from training.joint.data import Targets, _images, _normalise, prepare
from training.joint.train import TrainConfig, target_batch, train

CATEGORIES = ("chair", "table", "storage")
TABLE1 = ("R", "R+DF", "DAR", "DAR+DF", "Uniform", "Ours", "Ours+IDO")
TABLE2 = ("DF", "Uniform", "Ours")


@dataclass
class EvalConfig:
    train_config: str = "training/configs/default.toml"
    data: str = "data/default"
    out: str = "runs/evaluate"
    docs: str = "docs"
    steps: int = 3000
    warmup: int = 500
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    modalities: list[str] = field(default_factory=lambda: ["points", "images"])
    max_targets: int = 0  # 0: every test target
    refine_steps: int = 100

    @classmethod
    def from_toml(cls, path: str | None, **overrides) -> "EvalConfig":
        data = tomllib.loads(Path(path).read_text()) if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def held_out_targets(dataset: Path, views: int, max_targets: int) -> tuple[Targets, list[str], list[str]]:
    """The test split as targets, with each shape's category and structure."""
    build_index(dataset / "test", dataset / "index-test", jobs=2)
    index = load_index(dataset / "index-test")
    meta = {row["name"]: row for row in json.loads((dataset / "meta.json").read_text())["shapes"]}
    names, points, images = [], [], []
    for i, record in enumerate(index.sources):
        name = Path(record.path).stem
        names.append(name)
        points.append(_normalise(index.load_source(i).points))
        images.append(_images(dataset / "images", name, views) if views else None)
        if max_targets and len(names) >= max_targets:
            break
    have_images = views > 0 and all(im is not None for im in images)
    targets = Targets(names, torch.from_numpy(np.stack(points)), torch.from_numpy(np.stack(images)) if have_images else None)
    return targets, [meta[n]["category"] for n in names], [meta[n]["structure"] for n in names]


@torch.no_grad()
def evaluate_method(
    sources: SourceTensors, targets: Targets, modality: str, n_points: int, retrieval, deformation: JointModel | None, refine_steps: int = 0, oracle: bool = False
) -> dict[str, np.ndarray]:
    """Per-target chamfer (x100) of top-1, best of top-10 and, optionally, the oracle.

    Args:
        retrieval: ``(target, modality) -> (B, S)`` distances to every source.
        deformation: the model whose deformation module deforms (None: no deformation).
        refine_steps: inner deformation optimisation steps (0: none).
    """
    generator = torch.Generator().manual_seed(0)
    k = min(10, len(sources))
    if deformation is not None:
        global_code, part_code = deformation.deformation.encode_sources(sources)
    out: dict[str, list] = {"top1": [], "top10": [], "oracle": [], "oracle_source": [], "ranking": []}
    for row in range(len(targets)):
        target, truth = target_batch(targets, torch.tensor([row]), modality, n_points, 0.0, generator)
        distance = retrieval(target, modality)[0]
        ranking = torch.argsort(distance)
        out["ranking"].append(ranking.numpy())
        target_code = deformation.deformation.encode_target(target, modality) if deformation is not None else None

        def fits(rows: torch.Tensor, refine: int = 0) -> torch.Tensor:
            chosen = sources.select(rows)
            if deformation is None:
                return chamfer_distance(chosen.points, truth.expand(len(rows), -1, -1))
            boxes = deformation.deformation.predict_boxes(chosen, global_code[rows], part_code[rows], target_code.expand(len(rows), -1))
            boxes = project_positive(boxes, chosen.basis, chosen.min_half, chosen.part_mask)
            if refine:
                boxes = refine_boxes(chosen, boxes, truth.expand(len(rows), -1, -1), FitOptions(refine_steps=refine, refine_seconds=60.0))
            return chamfer_distance(deformed_points(chosen, boxes), truth.expand(len(rows), -1, -1))

        top = fits(ranking[:k], refine_steps)
        out["top1"].append(float(top[0]) * 100)
        out["top10"].append(float(top.min()) * 100)
        if oracle:
            every = torch.cat([fits(torch.arange(s, min(s + 256, len(sources)))) for s in range(0, len(sources), 256)])
            out["oracle"].append(float(every.min()) * 100)
            out["oracle_source"].append(int(every.argmin()))
    return {key: np.asarray(value) for key, value in out.items() if len(value)}


def recall_at(ranking: np.ndarray, best: np.ndarray, k: int) -> float:
    """Share of targets whose oracle-best source is among the first k retrieved."""
    return float(np.mean([b in r[:k] for r, b in zip(ranking, best)]))


def run(config: EvalConfig) -> dict:
    started = time.time()
    base = TrainConfig.from_toml(config.train_config, data=config.data, steps=config.steps, warmup=config.warmup, modalities=config.modalities, max_minutes=0)
    dataset = Path(config.data)
    data = prepare(dataset, base.source_fraction, base.val_fraction, base.model.source_points, base.views if "images" in config.modalities else 0)
    targets, categories, structures = held_out_targets(dataset, base.views if "images" in config.modalities else 0, config.max_targets)
    meta = json.loads((dataset / "meta.json").read_text())["shapes"]
    train_structures = {r["structure"] for r in meta if r["split"] == "train"}
    unseen = np.array([s not in train_structures for s in structures])
    results: dict = {"config": asdict(config), "seeds": {}, "categories": categories, "unseen_structure": unseen.tolist()}
    n = base.model.n_points
    for seed in config.seeds:
        out = Path(config.out) / f"seed{seed}"
        runs = {
            "DF": TrainConfig(**{**base.__dict__, "out": str(out / "df"), "mode": "deformation", "seed": seed}),
            "Uniform": TrainConfig(**{**base.__dict__, "out": str(out / "uniform"), "sampling": "uniform", "seed": seed}),
            "Ours": TrainConfig(**{**base.__dict__, "out": str(out / "ours"), "seed": seed}),
        }
        models = {}
        for name, run_config in runs.items():
            train(run_config, data)
            models[name] = load_checkpoint(Path(run_config.out) / "last.pt")[0]
        dar = TrainConfig(**{**base.__dict__, "out": str(out / "dar"), "mode": "retrieval", "init": str(out / "df" / "last.pt"), "seed": seed})
        train(dar, data)
        models["DAR"] = load_checkpoint(out / "dar" / "last.pt")[0]
        mds_model, mds_coordinates = train_mds_retrieval(data.sources, data.train, base.model, config.modalities, config.steps, seed=seed)

        def joint_retrieval(model):
            embeddings = model.retrieval.embed_sources(data.sources)[0]
            return lambda target, modality: torch.cdist(model.retrieval.embed_target(target, modality), embeddings)

        def mds_retrieval(target, modality):
            return torch.cdist(mds_model.retrieval.embed_target(target, modality), mds_coordinates)

        with torch.no_grad():
            retrievals = {"R": mds_retrieval, "DAR": joint_retrieval(models["DAR"]), "Uniform": joint_retrieval(models["Uniform"]), "Ours": joint_retrieval(models["Ours"])}
        methods = {
            "R": (retrievals["R"], None, 0, False),
            "R+DF": (retrievals["R"], models["DF"], 0, False),
            "DAR": (retrievals["DAR"], None, 0, False),
            "DAR+DF": (retrievals["DAR"], models["DF"], 0, True),  # the oracle here is DF's (Table 2)
            "Uniform": (retrievals["Uniform"], models["Uniform"], 0, True),
            "Ours": (retrievals["Ours"], models["Ours"], 0, True),
            "Ours+IDO": (retrievals["Ours"], models["Ours"], config.refine_steps, False),
        }
        seed_results = {}
        for modality in config.modalities:
            if modality == "images" and targets.images is None:
                continue
            for method, (retrieval, deformation, refine, oracle) in methods.items():
                if refine and modality != "points":
                    continue
                scores = evaluate_method(data.sources, targets, modality, n, retrieval, deformation, refine, oracle)
                seed_results[f"{modality}/{method}"] = {key: value.tolist() for key, value in scores.items() if key != "ranking"}
                if oracle:
                    seed_results[f"{modality}/{method}"]["recall"] = {str(k): recall_at(scores["ranking"], scores["oracle_source"], k) for k in (1, 5, 10)}
        results["seeds"][str(seed)] = seed_results
    results["seconds"] = time.time() - started
    Path(config.out).mkdir(parents=True, exist_ok=True)
    (Path(config.out) / "results.json").write_text(json.dumps(results))
    write_report(results, Path(config.docs))
    return results


def _cell(values: list[float]) -> str:
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or not np.all(np.isfinite(values)):
        return "–"
    return f"{values.mean():.3f}" if len(values) == 1 else f"{values.mean():.3f} ± {values.std():.3f}"


def summarise(results: dict, key: str, metric: str, mask: np.ndarray) -> list[float]:
    """Per-seed mean of ``metric`` over the targets in ``mask``."""
    return [float(np.mean(np.asarray(seed[key][metric])[mask])) for seed in results["seeds"].values() if key in seed and metric in seed[key] and mask.any()]


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
        f"wall time {results['seconds'] / 60:.1f} min. Chamfer distance x10^-2 (squared distances, mean per direction, "
        "summed) on shapes normalised to a unit box diagonal; held-out test targets; seeds: " + ", ".join(results["seeds"]) + " (mean ± std over seeds).",
        "",
    ]
    for modality in modalities:
        lines += [f"## Table 1 ({modality} targets): top-1 retrieved and deformed", "", "| method | " + " | ".join(CATEGORIES) + " | all | best of top-10 (all) |", "|---|" + "---|" * (len(CATEGORIES) + 2)]
        for method in TABLE1:
            key = f"{modality}/{method}"
            if not any(key in seed for seed in results["seeds"].values()):
                continue
            cells = [_cell(summarise(results, key, "top1", categories == c)) for c in CATEGORIES]
            every = np.ones(len(categories), bool)
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {_cell(summarise(results, key, 'top1', every))} | {_cell(summarise(results, key, 'top10', every))} |")
        lines += ["", f"## Table 2 ({modality} targets): oracle retrieval (best source after deformation)", "", "| deformation | " + " | ".join(CATEGORIES) + " | recall@1 | recall@5 | recall@10 |", "|---|" + "---|" * (len(CATEGORIES) + 3)]
        for method, label in (("DAR+DF", "DF"), ("Uniform", "Uniform"), ("Ours", "Ours")):
            key = f"{modality}/{method}"
            if not any(key in seed for seed in results["seeds"].values()):
                continue
            cells = [_cell(summarise(results, key, "oracle", categories == c)) for c in CATEGORIES]
            recalls = [_cell([seed[key]["recall"][str(k)] for seed in results["seeds"].values()]) for k in (1, 5, 10)]
            lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(recalls) + " |")
        if unseen.any():
            lines += ["", f"Generalisation ({modality}): {int(unseen.sum())} test targets have a part structure that no training shape has:", ""]
            lines += [f"- {method}: {_cell(summarise(results, f'{modality}/{method}', 'top1', unseen))} (seen structures: {_cell(summarise(results, f'{modality}/{method}', 'top1', ~unseen))})" for method in ("R+DF", "DAR+DF", "Ours") if any(f"{modality}/{method}" in s for s in results["seeds"].values())]
        lines.append("")
    docs.mkdir(parents=True, exist_ok=True)
    report = docs / "results.md"
    report.write_text("\n".join(lines) + "\n")
    _plot(results, docs, modalities, categories)
    return report


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML with EvalConfig fields")
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--docs")
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    config = EvalConfig.from_toml(args.config, data=args.data, out=args.out, docs=args.docs, steps=args.steps)
    results = run(config)
    print(f"wrote {Path(config.docs) / 'results.md'} in {results['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
