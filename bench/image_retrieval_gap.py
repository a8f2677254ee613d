"""Where Ours loses on image targets: retrieval or deformation.

    python bench/image_retrieval_gap.py [--seeds 0,1,2]

Reads the Ours runs that `python -m training.evaluate --config
training/configs/evaluate.toml` left in runs/evaluate/seed<N>/ours and, on
the held-out image targets (chamfer x1e-2), compares Ours' image retrieval
with a "teacher" retrieval that places each target by its module's *point*
code of the same shape's clean surface (what the image alignment fits the
image code to): with Ours' image-conditioned deformation and undeformed.
Also measures, in the retrieval space, how far each image code lands from
its teacher against the spacing of neighbouring sources, on training and
test shapes, beside R's (trained as the evaluation trains it). About two
minutes a seed on 2 cores; writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, write_section  # noqa: E402

from backend.model.checkpoint import load_checkpoint  # noqa: E402
from training.evaluate import EvalConfig, code_retrieval, evaluate_method, held_out_targets, mds_model  # noqa: E402
from training.joint.data import Targets, prepare  # noqa: E402
from training.joint.train import TrainConfig, target_batch  # noqa: E402


def clean_points(targets: Targets, n_points: int) -> torch.Tensor:
    """(T, n_points, 3) each target's true surface, as ``target_batch`` gives it for its image."""
    return target_batch(targets, torch.arange(len(targets)), "images", n_points, 0.0, torch.Generator().manual_seed(0))[
        1
    ]


@torch.no_grad()
def code_gap(model, targets: Targets, source_codes: torch.Tensor, n_points: int, limit: int = 240) -> dict[str, float]:
    """Image code vs point code of the same shape (first view), in units of
    the median distance between neighbouring sources, and how often both
    retrieve the same source."""
    rows = torch.arange(min(limit, len(targets)))
    images = targets.images[rows, 0].float() / 255.0
    image_code = model.retrieval.embed_target(images, "images")
    point_code = model.retrieval.embed_target(clean_points(targets, n_points)[rows], "points")
    same = torch.cdist(image_code, source_codes).argmin(1) == torch.cdist(point_code, source_codes).argmin(1)
    spacing = torch.cdist(source_codes, source_codes).fill_diagonal_(float("inf")).min(1).values.median()
    return {
        "gap": float((image_code - point_code).norm(dim=-1).mean() / spacing),
        "same_top1": float(same.float().mean()),
    }


@torch.no_grad()
def measure(evaluation: EvalConfig, base: TrainConfig, seed: int, data, targets: Targets) -> dict[str, float]:
    n_points = base.model.n_points
    model = load_checkpoint(Path(evaluation.out) / f"seed{seed}" / "ours" / "last.pt")[0].eval()
    source_codes = model.retrieval.embed_sources(data.sources)[0]
    truth = clean_points(targets, n_points)
    teacher_codes = model.retrieval.embed_target(truth, "points")
    order = iter(())  # rows of the targets, restarted for each evaluation below

    def teacher(target: torch.Tensor, modality: str) -> torch.Tensor:
        return torch.cdist(teacher_codes[next(order)].unsqueeze(0), source_codes)

    row = {}
    for label, retrieval, deformation in (
        ("image retrieval, deformed", code_retrieval(model, source_codes), model),
        ("image retrieval, undeformed", code_retrieval(model, source_codes), None),
        ("teacher retrieval, deformed", teacher, model),
        ("teacher retrieval, undeformed", teacher, None),
    ):
        order = iter(range(len(targets)))  # evaluate_method asks for the targets in order, one at a time
        row[label] = float(
            evaluate_method(data.sources, targets, "images", n_points, retrieval, deformation)["top1"].mean()
        )
    for split, split_targets in (("train", data.train), ("test", targets)):
        for key, value in code_gap(model, split_targets, source_codes, n_points).items():
            row[f"{split} {key}"] = value
    # R as the evaluation trains it (same seed, inputs and updates), for scale.
    r_model, r_codes = mds_model(base, data, evaluation.modalities, evaluation.warmup + evaluation.steps, seed)
    r_retrieval = code_retrieval(r_model, r_codes)
    row["R, undeformed"] = float(
        evaluate_method(data.sources, targets, "images", n_points, r_retrieval, None)["top1"].mean()
    )
    row["R, deformed"] = float(
        evaluate_method(data.sources, targets, "images", n_points, r_retrieval, model)["top1"].mean()
    )
    for split, split_targets in (("train", data.train), ("test", targets)):
        for key, value in code_gap(r_model, split_targets, r_codes, n_points).items():
            row[f"R {split} {key}"] = value
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="training/configs/evaluate.toml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", help="the evaluation's output folder (default: the config's)")
    args = parser.parse_args()
    evaluation = EvalConfig.from_toml(args.config, out=args.runs)
    base = TrainConfig.from_toml(evaluation.train_config, data=evaluation.data)
    data = prepare(Path(base.data), base.source_fraction, base.val_fraction, base.model.source_points, base.views)
    targets, _, _, _ = held_out_targets(Path(base.data), base.views, evaluation.max_targets)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [measure(evaluation, base, seed, data, targets) for seed in seeds]
    for seed, row in zip(seeds, rows):
        print(seed, {k: round(v, 3) for k, v in row.items()}, flush=True)
    stat = lambda key: f"{np.mean([r[key] for r in rows]):.3f} ± {np.std([r[key] for r in rows]):.3f}"  # noqa: E731
    lines = [
        "## Image targets: Ours' retrieval against its own point codes",
        "",
        f"`python bench/image_retrieval_gap.py --seeds {args.seeds}{' --runs ' + args.runs if args.runs else ''}` "
        f"on {machine()}; "
        f"the Ours runs in {evaluation.out}, "
        f"{len(targets)} held-out image targets, top-1 chamfer x1e-2 (mean ± std over seeds). "
        "Teacher retrieval places each image target by the retrieval module's code of the same shape's clean points, "
        "which the image alignment fits the image code to.",
        "",
        "| retrieval | deformed by Ours (image code) | undeformed |",
        "|---|---|---|",
        f"| Ours, image code | {stat('image retrieval, deformed')} | {stat('image retrieval, undeformed')} |",
        f"| teacher (Ours' point code of the true shape) | {stat('teacher retrieval, deformed')} | "
        f"{stat('teacher retrieval, undeformed')} |",
        f"| R (its MDS space) | {stat('R, deformed')} | {stat('R, undeformed')} |",
        "",
        "Distance from an image's code to its shape's point code, in median spacings between neighbouring sources, "
        f"training / test shapes: Ours {stat('train gap')} / {stat('test gap')}, "
        f"R {stat('R train gap')} / {stat('R test gap')}. "
        "Share of images whose code retrieves the point code's top-1: "
        f"Ours {stat('train same_top1')} / {stat('test same_top1')}, "
        f"R {stat('R train same_top1')} / {stat('R test same_top1')}.",
    ]
    write_section("image-retrieval-gap", "\n".join(lines))


if __name__ == "__main__":
    main()
