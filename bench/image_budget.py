"""Image targets with a larger retrieval budget for both Ours and R.

    python bench/image_budget.py [--seeds 0,1,2] [--align 600] [--r-steps 1200]

Reads the Ours runs that `python -m training.evaluate --config
training/configs/evaluate.toml` left in runs/evaluate/seed<N>/ours (300 image
alignment steps after 600 joint retrieval updates: 900 retrieval-module
updates, as many as R's regression gets there), continues a copy's image
alignment to ``--align`` steps, and trains R's regression for ``--r-steps``
steps (600 + 600 = 1,200 updates for both by default). Reports top-1 and best
of top-10 on the held-out image targets (chamfer x1e-2) and writes its section
of docs/benchmarks.md. About 6 minutes a seed on 2 cores; a seed already
measured with the same options (bench/out/image_budget/seed<N>.json) is reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backend.model.checkpoint import load_checkpoint  # noqa: E402
from report import machine, write_section  # noqa: E402
from training.evaluate import EvalConfig, evaluate_method, held_out_targets, joint_retrieval, mds_retrieval  # noqa: E402
from training.joint.data import prepare  # noqa: E402
from training.joint.train import TrainConfig, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="training/configs/evaluate.toml")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--align", type=int, default=600)
    parser.add_argument("--r-steps", type=int, default=1200)
    parser.add_argument("--out", default="bench/out/image_budget")
    args = parser.parse_args()
    evaluation = EvalConfig.from_toml(args.config)
    base = TrainConfig.from_toml(evaluation.train_config, data=evaluation.data)
    data = prepare(Path(base.data), base.source_fraction, base.val_fraction, base.model.source_points, base.views)
    targets, _, _, _ = held_out_targets(Path(base.data), base.views, evaluation.max_targets)
    n = base.model.n_points
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        done = Path(args.out) / f"seed{seed}.json"
        if done.is_file() and json.loads(done.read_text()).get("key") == [args.align, args.r_steps]:
            rows.append(json.loads(done.read_text()))  # seeds can run as separate invocations
            continue
        started = time.time()
        source = Path(evaluation.out) / f"seed{seed}" / "ours"
        copy = Path(args.out) / f"seed{seed}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy)
        saved = json.loads((source / "config.json").read_text())
        config = TrainConfig.from_toml(
            evaluation.train_config, data=base.data, out=str(copy), steps=saved["steps"], warmup=saved["warmup"], seed=saved["seed"], val_every=10**9, image_alignment_steps=args.align
        )
        train(config, data)
        ours = load_checkpoint(copy / "last.pt")[0]
        r_retrieval = mds_retrieval(base, data, evaluation.modalities, args.r_steps, seed)
        with torch.no_grad():
            scores = {
                "Ours": evaluate_method(data.sources, targets, "images", n, joint_retrieval(ours, data.sources), ours, 0, False),
                "R": evaluate_method(data.sources, targets, "images", n, r_retrieval, None, 0, False),
            }
        row = {"seed": seed, "key": [args.align, args.r_steps], "seconds": time.time() - started}
        row.update({k: {"top1": float(v["top1"].mean()), "top10": float(v["top10"].mean())} for k, v in scores.items()})
        print(json.dumps(row), flush=True)
        done.write_text(json.dumps(row))
        rows.append(row)
    lines = [
        "## Image targets: Ours and R with 1,200 retrieval updates each",
        "",
        f"`python bench/image_budget.py --seeds {args.seeds} --align {args.align} --r-steps {args.r_steps}` on {machine()}; "
        f"{len(targets)} held-out image targets, chamfer x1e-2. Ours: the runs of docs/results.md with the image alignment "
        f"continued to {args.align} steps; R: its regression trained for {args.r_steps} steps.",
        "",
        "| method | seeds | top-1 | best of top-10 |",
        "|---|---|---|---|",
    ]
    for method, label in (("R", f"R ({args.r_steps} steps)"), ("Ours", f"Ours ({args.align} alignment steps)")):
        top1 = np.array([r[method]["top1"] for r in rows])
        top10 = np.array([r[method]["top10"] for r in rows])
        lines.append(f"| {label} | {len(rows)} | {top1.mean():.3f} ± {top1.std():.3f} | {top10.mean():.3f} ± {top10.std():.3f} |")
    lines += ["", "Per seed: " + "; ".join(f"seed {r['seed']}: R {r['R']['top1']:.3f}, Ours {r['Ours']['top1']:.3f}" for r in rows) + "."]
    write_section("image-budget", "\n".join(lines))


if __name__ == "__main__":
    main()
