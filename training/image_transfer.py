"""Does the learned image prior transfer? Two checkpoints' image encoders side by side (issue 15 item 6).

    python -m training.image_transfer views --data data/default            # the procedural test renders, once
    python -m training.image_transfer measure --checkpoints A.pt B.pt [--procedural] [--out FILE.json]

``measure`` reports, for each checkpoint:

- on Blender's renders of out-of-distribution furniture (``bench/blender_renders.py``'s cache in
  ``bench/out/images``: read, never rendered here), the place of the library model closest in 3D (that bench's
  ``closest_shape``, its ranking oracle) among the 300 sources of the mixed OOD library
  (``bench/out/ood/index-100/mixed``) ordered by the learned image distance (1: first): mean, median, recall@1,
  @10 and @20; the same from the true shape's point code (``teacher_*``: what ``image_teacher = "points"``
  aligns images to) and, with ``--source-teacher``, from its source embedding (``image_teacher = "source"``);
- with ``--procedural``, the image rows of Tables 1-2 for that one checkpoint on the procedural test split of
  ``data/default`` (its 242 targets, 357 sources, ``training.evaluate.evaluate_method``): top-1 retrieved and
  deformed and best of top-10 per category; on an evenly spread subset (``--oracle-targets``) the oracle (best
  deformed source of all) and recall@1/5/10 of the oracle's source.

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
OOD_TARGET_SEED = 1  # bench/ood.py's TARGET_SEED: the shapes bench/blender_renders.py renders


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


def true_points(target: str, count: int) -> torch.Tensor:
    """(1, count, 3) clean surface samples of a Blender render's true shape (``training.data.ood``, the target
    seed ``bench/blender_renders.py`` renders), centred on its box and scaled to a unit box diagonal."""
    from backend.geometry.sampling import sample_surface
    from training.data.ood import generate

    category, index = target.rsplit("_", 1)
    vertices, faces = generate(category, OOD_TARGET_SEED, int(index)).mesh_arrays()
    points = sample_surface(vertices, faces, count, np.random.default_rng(0))[0]
    lo, hi = points.min(axis=0), points.max(axis=0)
    return torch.from_numpy(((points - (lo + hi) / 2) / np.linalg.norm(hi - lo)).astype(np.float32)).unsqueeze(0)


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
        teacher = embedding_distance(model, true_points(name, model.config.n_points), "points", codes)[0]
        rows.append(
            {
                "target": name,
                "closest_shape": closest,
                "rank": rank,
                "top1": paths[int(distance.argmin())],
                "teacher_rank": int((teacher < teacher[row]).sum()) + 1,
            }
        )
    ranks = np.array([r["rank"] for r in rows])
    teacher_ranks = np.array([r["teacher_rank"] for r in rows])
    sets: dict[str, list] = {}  # bench/blender_renders.py's sets: targets 0-4 per category (A), 5-9 (B), ...
    for r in rows:
        sets.setdefault("ABCDEFGH"[min(int(r["target"].rsplit("_", 1)[1]) // 5, 7)], []).append(r)
    summary = {
        "targets": len(rows),
        "sources": len(paths),
        "mean_rank": float(ranks.mean()),
        "median_rank": float(np.median(ranks)),
        **{f"recall@{k}": float((ranks <= k).mean()) for k in (1, 10, 20)},
        **{f"mean_rank_{s}": float(np.mean([r["rank"] for r in part])) for s, part in sorted(sets.items())},
        # The ceiling the image encoder is aligned to: the point code of the true shape's clean samples.
        "teacher_mean_rank": float(teacher_ranks.mean()),
        "teacher_median_rank": float(np.median(teacher_ranks)),
        "teacher_recall@10": float((teacher_ranks <= 10).mean()),
        "top1_same_category": float(
            np.mean([r["top1"].replace("\\", "/").split("/")[-2] == r["target"].split("_")[0] for r in rows])
        ),
    }
    return {"summary": summary, "rows": rows}


@torch.no_grad()
def source_teacher_ranks(
    checkpoint: str, work: Path, renders: Path = RENDERS, index_dir: Path = OOD_INDEX
) -> dict[str, float]:
    """The same places, ranked from the true shape's own place as a source (its source embedding: the teacher of
    ``image_teacher = "source"``); the true shapes are written and indexed under ``work`` (a scratch folder)."""
    from backend.library import build_index
    from training.data.export import write_glb
    from training.data.ood import generate

    model, _, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    model.eval()
    index = load_index(index_dir)
    paths = [record.path for record in index.sources]
    codes = source_embeddings(model, stack_sources([index.load_source(i) for i in range(len(index))]))
    targets = blender_targets(renders)
    for name, _, _ in targets:
        category, number = name.rsplit("_", 1)
        path = work / "library" / category / f"{name}.glb"
        if not path.exists():
            write_glb(generate(category, OOD_TARGET_SEED, int(number)), path)
    build_index(work / "library", work / "index")
    own = load_index(work / "index")
    names = [Path(record.path).stem for record in own.sources]
    own_codes = source_embeddings(model, stack_sources([own.load_source(i) for i in range(len(own))]))
    ranks = []
    for name, _, closest in targets:
        distance = (codes - own_codes[names.index(name)]).norm(dim=-1)
        row = next(i for i, p in enumerate(paths) if p.endswith(closest))
        ranks.append(int((distance < distance[row]).sum()) + 1)
    ranks = np.array(ranks)
    return {
        "mean_rank": float(ranks.mean()),
        "median_rank": float(np.median(ranks)),
        "recall@10": float((ranks <= 10).mean()),
    }


@torch.no_grad()
def procedural_rows(checkpoint: str, dataset: Path, max_targets: int = 0, oracle_targets: int = 60) -> dict:
    """The image rows of Tables 1-2 for one checkpoint ("Ours" retrieval and deformation) on the test split:
    Table 1 (top-1, best of top-10) on ``max_targets`` (0: all 242), Table 2 (the oracle: best deformed source
    of all, and recall@k of its source) on ``oracle_targets`` of them, evenly spread (0: all; the oracle deforms
    every source for every target, about 30 times the work of Table 1)."""
    from training.evaluate import evaluate_method, held_out_targets, joint_retrieval, recall_at
    from training.joint.data import prepare

    model, _, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    model.eval()
    data = prepare(dataset, 0.35, 0.1, model.config.source_points, 0, build=False)
    retrieval = joint_retrieval(model, data.sources)
    table = {"sources": len(data.sources)}
    for name, count, oracle in (("table1", max_targets, False), ("table2", oracle_targets, True)):
        targets, categories, _, _ = held_out_targets(dataset, 2, count)
        if targets.images is None:
            raise SystemExit(f"no test renders in {dataset}/images: run `python -m training.image_transfer views`")
        started = time.time()
        scores = evaluate_method(
            data.sources, targets, "images", model.config.n_points, retrieval, model, oracle=oracle
        )
        categories = np.array(categories)
        part = {"targets": len(targets)}
        for key in ("oracle",) if oracle else ("top1", "top10"):
            part[key] = {c: float(scores[key][categories == c].mean()) for c in ("chair", "table", "storage")}
            part[key]["all"] = float(scores[key].mean())
        if oracle:
            part["recall"] = {str(k): recall_at(scores["ranking"], scores["oracle_source"], k) for k in (1, 5, 10)}
        part["seconds"] = time.time() - started
        table[name] = part
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
    measure.add_argument("--max-targets", type=int, default=0, help="Table 1's test targets (0: all)")
    measure.add_argument("--oracle-targets", type=int, default=60, help="Table 2's, evenly spread (0: all)")
    measure.add_argument("--source-teacher", help="scratch folder: also rank from the true shapes' source places")
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
        if args.source_teacher:
            entry["source_teacher"] = source_teacher_ranks(
                checkpoint, Path(args.source_teacher), Path(args.renders), Path(args.index)
            )
            print(checkpoint, "source teacher", json.dumps(entry["source_teacher"]), flush=True)
        if args.procedural:
            entry["procedural"] = procedural_rows(checkpoint, Path(args.data), args.max_targets, args.oracle_targets)
            print(checkpoint, "procedural", json.dumps(entry["procedural"]), flush=True)
        results[checkpoint] = entry
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
