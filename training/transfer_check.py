"""A short measured comparison of the training recipes: as before against trained for transfer.

    python -m training.transfer_check train [--steps 700 --warmup 200] [--out runs/transfer-check]
    python -m training.transfer_check measure [--per-category 30 --targets 6] [--recipes old transfer]

``train`` trains the compact model of ``training/configs/compare.toml`` on point targets twice
with the same data, seed and number of updates: ``old`` (the recipe as it was) and ``transfer``
(``training/configs/transfer.toml``'s transfer options: per-axis scaling of targets and sources,
part-size jitter, held-out structure families, deformation on top of the per-axis placement), and
``placement``: ``transfer`` trained on the sources whose per-axis placement fits each target best
(``sampling = "placement"``, the ones a fit refines) instead of random pairs.
``measure`` evaluates both on furniture from a second, independently written generator
(``bench/ood.py``'s helpers; libraries and targets it did not make) and writes
``<out>/measure-<recipes>.json``: per checkpoint and mode (full clouds, single-view scans), the product's
default fit and the learned deformation alone (the network's prediction for the source the
per-axis placement ranks first, unrefined) against that placement itself and the per-axis box oracle.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.joint.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("old", "transfer", "placement")


def recipe(name: str, out: Path, steps: int, warmup: int, batch: int, candidates: int, mode: str) -> TrainConfig:
    """The compact comparison recipe on point targets; ``transfer`` adds transfer.toml's options."""
    base = TrainConfig.from_toml(
        ROOT / "training/configs/compare.toml",
        modalities=["points"],
        steps=steps,
        warmup=warmup,
        batch=batch,
        candidates=candidates,
        mode=mode,
        out=str(out / name),
        val_every=10**9,
        image_alignment_steps=0,
        max_minutes=0,
    )
    if name == "old":
        return base
    if name == "placement":  # the transfer recipe, trained on the sources a fit refines
        return dataclasses.replace(
            recipe("transfer", out, steps, warmup, batch, candidates, mode), out=str(out / name), sampling="placement"
        )
    transfer = TrainConfig.from_toml(ROOT / "training/configs/transfer.toml")
    return dataclasses.replace(
        base,
        axis_scale=transfer.axis_scale,
        part_jitter=transfer.part_jitter,
        held_out_structures=transfer.held_out_structures,
        model=dataclasses.replace(base.model, placement_base=transfer.model.placement_base),
    )


def _ood():
    spec = importlib.util.spec_from_file_location("ood_bench", ROOT / "bench" / "ood.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ood_bench"] = module
    spec.loader.exec_module(module)
    return module


def _world_fit(ood, fitter, result, boxes: torch.Tensor, started: float):
    """``bench/ood.py``'s ``Fit`` of the first candidate of a ``fit_cloud`` result with ``boxes`` (K, 6), normalised."""
    row = int(result.rows[0])
    k = fitter.index.sources[row].n_parts
    centre, diagonal = result.centre[0].double(), float(result.diagonal[0])
    boxes = boxes.double()
    world = torch.cat([boxes[:k, :3] * diagonal + centre, boxes[:k, 3:] * diagonal], dim=-1).numpy()
    return ood.Fit(row, world, 0.0, time.perf_counter() - started)


def placement_fits(ood):
    """Two methods on the source the learning-free ranking puts first, neither refined: its per-axis placement
    (``placement``) and the network's prediction for it (``network``: the learned deformation alone)."""
    from backend.model.inference import fit_cloud, network_boxes

    def first(fitter, cloud):
        points = torch.from_numpy(np.asarray(cloud, np.float32))
        return fit_cloud(None, fitter.sources, None, points, torch.zeros(1), top_k=1, pool=1, refine=False), points

    def placement(fitter, cloud):
        started = time.perf_counter()
        result, _ = first(fitter, cloud)
        return _world_fit(ood, fitter, result, result.boxes[0], started)

    @torch.no_grad()
    def network(fitter, cloud):
        started = time.perf_counter()
        result, points = first(fitter, cloud)
        row = result.rows[:1]
        target = ((points - result.centre[0]) / result.diagonal[0]).unsqueeze(0)
        code = fitter.model.deformation.encode_target(target, "points")
        model, codes = fitter.model, fitter.codes
        boxes = network_boxes(model, fitter.sources.select(row), codes["global"][row], codes["parts"][row], code)
        return _world_fit(ood, fitter, result, boxes[0], started)

    return {"placement": placement, "network": network}


def measure(
    ood, checkpoints: dict[str, Path], per_category: int, targets_per_category: int, out_dir: Path, pipeline: bool
) -> dict:
    """Per checkpoint: the product's default fit and the network's deformation alone on ``bench/ood.py``'s
    libraries (``per_category`` models each) and targets, full clouds and single-view scans."""
    from backend.fitting import FitOptions, Fitter

    libraries_dir = ood.build_libraries(out_dir, per_category)  # its own folder: fitters cache codes there
    libraries = {name: ood.load_library(path) for name, path in libraries_dir.items()}
    targets = ood.make_targets(targets_per_category)
    modes = ("full", "scan")
    out: dict = {"per_category": per_category, "targets_per_category": targets_per_category, "summary": {}}
    for name, checkpoint in checkpoints.items():
        started = time.time()
        fitters = {lib: Fitter.open(checkpoint, path, device="cpu") for lib, path in libraries_dir.items()}
        methods = {"product": ood.product_fit(FitOptions()), **placement_fits(ood)}
        if pipeline and name == next(iter(checkpoints)):
            methods["pipeline"] = ood.pipeline_fit  # learning-free: the same for every checkpoint
        results = ood.evaluate(fitters, libraries, targets, methods, modes, log=lambda text: None)
        out[name] = results
        summary = results["summary"]
        fields = ("chamfer", "oracle", "ratio", "ratio_mean_per_target", "scale_p95_mean", "share_over_3x")
        out["summary"][name] = {key: {k: entry[k] for k in fields} for key, entry in summary.items()}
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.transfer_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["train", "measure"])
    parser.add_argument("--out", default="runs/transfer-check")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES, help="train only these")
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4, help="sources per target and step")
    parser.add_argument(
        "--mode",
        default="deformation",
        choices=["joint", "deformation"],
        help="deformation (default): every update trains the deformation module, the only learned part a fit "
        "of a library under 20,000 sources uses (fit_cloud ranks every source geometrically)",
    )
    parser.add_argument("--per-category", type=int, default=30)
    parser.add_argument("--targets", type=int, default=6)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.command == "train":
        for name in args.recipes:
            started = time.time()
            train(recipe(name, out, args.steps, args.warmup, args.batch, args.candidates, args.mode))
            print(f"{name}: {time.time() - started:.0f} s", flush=True)
        return 0
    checkpoints = {name: out / name / "best.pt" for name in args.recipes}
    results = measure(_ood(), checkpoints, args.per_category, args.targets, out / "ood", pipeline="old" in checkpoints)
    results["command"] = "python -m training.transfer_check " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / f"measure-{'-'.join(args.recipes)}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results["summary"], indent=1))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process is fastest
    raise SystemExit(main())
