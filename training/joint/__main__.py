"""``python -m training.joint train --config training/configs/default.toml``."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.joint.train import TrainConfig, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.joint", description="Joint retrieval and deformation training."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train or resume (runs under torchrun too)")
    run.add_argument("--config", default="training/configs/default.toml")
    run.add_argument("--data", help="data set folder (python -m training.data generate)")
    run.add_argument("--out", help="run folder: config.json, log.jsonl, last.pt, best.pt")
    run.add_argument("--steps", type=int)
    run.add_argument("--max-minutes", dest="max_minutes", type=float)
    run.add_argument("--sampling", choices=["retrieval", "uniform", "placement"])
    run.add_argument("--seed", type=int)
    export = commands.add_parser("export", help="ship a run's best model: weights only, float16")
    export.add_argument("--run", required=True)
    export.add_argument("--out", default="backend/checkpoints/default.pt")
    curves = commands.add_parser("curves", help="plot a run's training curves")
    curves.add_argument("--run", required=True)
    curves.add_argument("--out", default="docs/training_curves.png")
    args = parser.parse_args(argv)
    if args.command == "export":
        from backend.model.checkpoint import export_checkpoint

        export_checkpoint(Path(args.run) / "best.pt", args.out)
        print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")
        return 0
    if args.command == "curves":
        from training.joint.report import plot_curves

        print(plot_curves(Path(args.run), Path(args.out)))
        return 0
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    best = train(TrainConfig.from_toml(args.config, **overrides))
    print(f"best checkpoint: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
