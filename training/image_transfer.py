"""Does the learned image prior transfer? Two checkpoints' image encoders side by side (issue 15 item 6).

    python -m training.image_transfer views --data data/default            # the procedural test renders, once
    python -m training.image_transfer measure --checkpoints A.pt B.pt [--procedural] [--out FILE.json]

``measure`` reports, for each checkpoint:

- on Blender's renders of out-of-distribution furniture (``bench/blender_renders.py``'s cache in
  ``bench/out/images``: read, never rendered here), the place of the library model closest in 3D (that bench's
  ``closest_shape``, its ranking oracle) among the 300 sources of the mixed OOD library
  (``bench/out/ood/index-100/mixed``) ordered by the learned image distance (1: first): mean, median, recall@1,
  @10 and @20;
- with ``--procedural``, the image rows of Tables 1-2 for that one checkpoint on the procedural test split of
  ``data/default`` (its 242 targets, 357 sources, ``training.evaluate.evaluate_method``): top-1 retrieved and
  deformed and best of top-10 per category, the oracle (best deformed source of all), recall@1/5/10 of the
  oracle's source.

Source codes are computed here, not read from or written to a library's ``model-<id>.npz`` cache (the fitter's),
so measuring leaves the bench folders as they were.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from backend.fitting import image_tensor
from backend.library import load_index
from backend.model.checkpoint import load_checkpoint
from backend.model.inference import embedding_distance
from backend.model.sources import stack_sources

ROOT = Path(__file__).resolve().parent.parent
RENDERS = ROOT / "bench" / "out" / "images"
OOD_INDEX = ROOT / "bench" / "out" / "ood" / "index-100" / "mixed"


@torch.no_grad()
def source_embeddings(model, sources, batch: int = 256) -> torch.Tensor:
    """(S, E) the sources' places in the retrieval space, as ``Fitter.encode_sources`` computes them."""
    n = model.config.source_points
    out = []
    for start in range(0, len(sources), batch):
        sub = sources.select(torch.arange(start, min(start + batch, len(sources))))
        sub.points, sub.labels = sub.points[:, :n], sub.labels[:, :n]
        out.append(model.retrieval.embed_sources(sub)[0])
    return torch.cat(out)


def blender_targets(renders: Path) -> list[tuple[str, np.ndarray, str]]:
    """(target, (H, W, 3) uint8 image, closest library shape's path) for every cached render with a result row."""
    from PIL import Image

    closest = {}
    for results in sorted(renders.glob("results*.json")):
        for row in json.loads(results.read_text())["rows"]:
            closest[row["target"]] = row["closest_shape"]
    out = []
    for name in sorted(closest):
        path = renders / f"{name}.png"
        if path.exists():
            out.append((name, np.asarray(Image.open(path).convert("RGB")), closest[name]))
    return out


@torch.no_grad()
def blender_ranks(checkpoint: str, renders: Path = RENDERS, index_dir: Path = OOD_INDEX) -> dict:
    """Place (1-based) of each render's 3D-closest library model under the learned image distance."""
    model, _, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    model.eval()
    index = load_index(index_dir)
    paths = [record.path for record in index.sources]
    sources = stack_sources([index.load_source(i) for i in range(len(index))], model.config.max_parts)
    codes = source_embeddings(model, sources)
    rows = []
    for name, image, closest in blender_targets(renders):
        target = image_tensor(image, model.config.image_size)
        distance = embedding_distance(model, target, "images", codes)[0]
        row = next(i for i, p in enumerate(paths) if p.endswith(closest))
        rank = int((distance < distance[row]).sum()) + 1
        rows.append({"target": name, "closest_shape": closest, "rank": rank, "top1": paths[int(distance.argmin())]})
    ranks = np.array([r["rank"] for r in rows])
    sets = {"A": [r for r in rows if int(r["target"][-2:]) < 5], "B": [r for r in rows if int(r["target"][-2:]) >= 5]}
    summary = {
        "targets": len(rows),
        "sources": len(paths),
        "mean_rank": float(ranks.mean()),
        "median_rank": float(np.median(ranks)),
        **{f"recall@{k}": float((ranks <= k).mean()) for k in (1, 10, 20)},
        **{f"mean_rank_{s}": float(np.mean([r["rank"] for r in part])) for s, part in sets.items() if part},
        "top1_same_category": float(
            np.mean([r["top1"].replace("\\", "/").split("/")[-2] == r["target"].split("_")[0] for r in rows])
        ),
    }
    return {"summary": summary, "rows": rows}


@torch.no_grad()
def procedural_rows(checkpoint: str, dataset: Path, max_targets: int = 0) -> dict:
    """The image rows of Tables 1-2 for one checkpoint ("Ours" retrieval and deformation) on the test split."""
    from training.evaluate import evaluate_method, held_out_targets, joint_retrieval, recall_at
    from training.joint.data import prepare

    model, _, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    model.eval()
    data = prepare(dataset, 0.35, 0.1, model.config.source_points, 0, build=False)
    targets, categories, _, _ = held_out_targets(dataset, 2, max_targets)
    if targets.images is None:
        raise SystemExit(f"no test renders in {dataset}/images: run `python -m training.image_transfer views` first")
    started = time.time()
    scores = evaluate_method(
        data.sources,
        targets,
        "images",
        model.config.n_points,
        joint_retrieval(model, data.sources),
        model,
        oracle=True,
    )
    categories = np.array(categories)
    table = {}
    for key in ("top1", "top10", "oracle"):
        table[key] = {c: float(scores[key][categories == c].mean()) for c in ("chair", "table", "storage")}
        table[key]["all"] = float(scores[key].mean())
    table["recall"] = {str(k): recall_at(scores["ranking"], scores["oracle_source"], k) for k in (1, 5, 10)}
    table["targets"] = len(targets)
    table["sources"] = len(data.sources)
    table["seconds"] = time.time() - started
    return table


def write_test_views(dataset: Path) -> int:
    """Render the test split's views exactly as ``training.data.dataset.write_shape`` would have (its generator
    seed, views 2, ``render_image``) into ``dataset/images``; returns how many were written."""
    from training.data.dataset import write_views

    meta = json.loads((dataset / "meta.json").read_text())
    names = [row["name"] for row in meta["shapes"] if row["split"] == "test"]
    return write_views(dataset, names, views=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.image_transfer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    views = commands.add_parser("views", help="render the procedural test split's views (render_image, 2 each)")
    views.add_argument("--data", default="data/default")
    measure = commands.add_parser("measure", help="rank and table rows for each checkpoint")
    measure.add_argument("--checkpoints", nargs="+", required=True)
    measure.add_argument("--renders", default=str(RENDERS))
    measure.add_argument("--index", default=str(OOD_INDEX))
    measure.add_argument("--procedural", action="store_true", help="also the image rows of Tables 1-2")
    measure.add_argument("--data", default="data/default")
    measure.add_argument("--max-targets", type=int, default=0)
    measure.add_argument("--out", help="write every number here (JSON)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.command == "views":
        print(f"wrote {write_test_views(Path(args.data))} views", flush=True)
        return 0
    results = {}
    for checkpoint in args.checkpoints:
        entry = {"blender": blender_ranks(checkpoint, Path(args.renders), Path(args.index))}
        print(checkpoint, "blender", json.dumps(entry["blender"]["summary"]), flush=True)
        if args.procedural:
            entry["procedural"] = procedural_rows(checkpoint, Path(args.data), args.max_targets)
            print(checkpoint, "procedural", json.dumps(entry["procedural"]), flush=True)
        results[checkpoint] = entry
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
