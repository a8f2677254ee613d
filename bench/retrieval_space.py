"""Retrieval-space designs compared on the validation targets: a separate source encoder
against the Siamese space (sources placed by the point-target PointNet).

    python bench/retrieval_space.py [--warmup 300] [--steps 600] [--variants shared,separate]

Needs data/default (see docs/model.md). For each variant: a deformation warm-up on random
pairs, then joint training, both with training/configs/compare.toml; scores (chamfer x1e-2,
top-1, best of top-10, oracle, recall@k of the oracle's source) after the warm-up and after
joint training. Writes its section of docs/benchmarks.md. About 10 minutes a variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, write_section  # noqa: E402

from backend.model.checkpoint import load_checkpoint  # noqa: E402
from training.evaluate import evaluate_method, joint_retrieval, recall_at  # noqa: E402
from training.joint.data import prepare  # noqa: E402
from training.joint.train import TrainConfig, oracle_chamfer, train  # noqa: E402

VARIANTS = {"shared": {"shared_point_encoder": True}, "separate": {"shared_point_encoder": False}}


@torch.no_grad()
def scores(model, data, n_points: int) -> dict:
    retrieval = joint_retrieval(model, data.sources)
    out = {}
    for modality in ("points", "images"):
        s = evaluate_method(data.sources, data.val, modality, n_points, retrieval, model, 0, True)
        out[modality] = {
            "top1": float(s["top1"].mean()),
            "top10": float(s["top10"].mean()),
            "oracle": float(s["oracle"].mean()),
            **{f"recall@{k}": recall_at(s["ranking"], s["oracle_source"], k) for k in (1, 5, 10)},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--variants", default="shared,separate")
    parser.add_argument("--out", default="bench/out/retrieval_space")
    args = parser.parse_args()
    base = TrainConfig.from_toml("training/configs/compare.toml")
    base = replace(base, val_every=10**9)
    data = prepare(Path(base.data), base.source_fraction, base.val_fraction, base.model.source_points, base.views)
    rows = []
    for name in args.variants.split(","):
        config = replace(base, model=replace(base.model, **VARIANTS[name]))
        out = Path(args.out) / name
        started = time.time()
        train(replace(config, out=str(out / "warmup"), mode="deformation", steps=args.warmup), data)
        warm = load_checkpoint(out / "warmup" / "last.pt")[0]
        after_warmup = scores(warm, data, config.model.n_points)
        random_source = oracle_chamfer(warm, data.sources, data.val, "points", config.model.n_points, reduce="mean")
        train(
            replace(config, out=str(out / "joint"), init=str(out / "warmup" / "last.pt"), warmup=0, steps=args.steps),
            data,
        )
        after_joint = scores(load_checkpoint(out / "joint" / "last.pt")[0], data, config.model.n_points)
        result = {
            "variant": name,
            "after_warmup": after_warmup,
            "after_joint": after_joint,
            "random_source_points": random_source,
            "seconds": time.time() - started,
        }
        print(json.dumps(result), flush=True)
        rows.append(result)
    lines = [
        "## Retrieval space: shared point encoder vs separate source encoder",
        "",
        f"`python bench/retrieval_space.py --warmup {args.warmup} --steps {args.steps}` on {machine()}; "
        f"{len(data.val)} validation targets, {len(data.sources)} sources, chamfer x1e-2.",
        "",
        "| variant | stage | targets | top-1 | best of top-10 | oracle | recall@1 | recall@5 | recall@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for stage in ("after_warmup", "after_joint"):
            for modality, s in row[stage].items():
                lines.append(
                    f"| {row['variant']} | {stage.replace('_', ' ')} | {modality} | {s['top1']:.3f} | "
                    f"{s['top10']:.3f} | {s['oracle']:.3f} | "
                    f"{s['recall@1']:.2f} | {s['recall@5']:.2f} | {s['recall@10']:.2f} |"
                )
    lines += [
        "",
        "A random source, deformed (points): "
        + ", ".join(f"{r['variant']} {r['random_source_points']:.3f}" for r in rows)
        + ".",
    ]
    write_section("retrieval-space", "\n".join(lines))


if __name__ == "__main__":
    main()
