"""Reproduce the shape of the paper's Tables 1 and 2 on our procedural data.

    python -m training.evaluate --config training/configs/evaluate.toml

Trains every method with the same data and budget (per seed), evaluates on
the held-out test split (no test shape is a source or a training target),
and writes ``docs/results.md`` with the tables and ``docs/results_*.png``.
Each seed's numbers are kept in ``<out>/seed<N>/results.json``: a rerun of
the same configuration reuses them, so seeds can run as separate processes
(``--seeds 1``) and a last run over all seeds writes the report.

Methods: R (MDS retrieval), R+DF, DAR, DAR+DF, Uniform sampling, Ours, Ours
with IDO; oracle retrieval (Table 2) for DF, Uniform and Ours. Besides top-1
we report best-of-top-10 and retrieval recall@k against the oracle. Beside
them, on point targets, the learning-free pipeline that the product starts
from (``evaluate_pipeline``: no training, the same for every seed).

    python -m training.evaluate --config training/configs/evaluate.toml --pipeline-only

computes only that row on the same test split (seconds, not hours).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.library import build_index, load_index
from backend.model.checkpoint import load_checkpoint
from backend.model.geometry import chamfer_distance
from backend.model.inference import embedding_distance, fit_cloud, network_boxes
from backend.model.networks import JointModel, deformed_points
from backend.model.placement import box_placement, placement_scores, target_extent
from backend.model.refinement import refine_boxes
from backend.model.sources import SourceTensors
from training.baselines import train_mds_retrieval
from training.joint.data import Targets, TrainingData, _images, _normalise, prepare
from training.joint.train import TrainConfig, target_batch, train
from training.results_report import CATEGORIES, write_report


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
    pipeline_steps: int = 200  # the learning-free pipeline's refinement budget (fit_cloud's default)
    notes: str = ""  # a markdown file appended to docs/results.md (the analysis of the numbers)

    @classmethod
    def from_toml(cls, path: str | None, **overrides) -> EvalConfig:
        data = tomllib.loads(Path(path).read_text()) if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def held_out_targets(dataset: Path, views: int, max_targets: int) -> tuple[Targets, list[str], list[str], list[int]]:
    """The test split as targets, with each shape's category, structure and
    row in ``dataset/index-test``; ``max_targets`` > 0 keeps that many, evenly
    spread over the (category-sorted) index so every category stays in."""
    build_index(dataset / "test", dataset / "index-test", jobs=2)
    index = load_index(dataset / "index-test")
    meta = {row["name"]: row for row in json.loads((dataset / "meta.json").read_text())["shapes"]}
    rows = list(range(len(index)))
    if 0 < max_targets < len(rows):
        rows = sorted(set(np.linspace(0, len(rows) - 1, max_targets).round().astype(int).tolist()))
    names, points, images = [], [], []
    for i in rows:
        name = Path(index.sources[i].path).stem
        names.append(name)
        points.append(_normalise(index.load_source(i).points))
        images.append(_images(dataset / "images", name, views) if views else None)
    have_images = views > 0 and all(im is not None for im in images)
    targets = Targets(
        names, torch.from_numpy(np.stack(points)), torch.from_numpy(np.stack(images)) if have_images else None
    )
    return targets, [meta[n]["category"] for n in names], [meta[n]["structure"] for n in names], rows


@torch.no_grad()
def evaluate_method(
    sources: SourceTensors,
    targets: Targets,
    modality: str,
    n_points: int,
    retrieval,
    deformation: JointModel | None,
    refine_steps: int = 0,
    oracle: bool = False,
) -> dict[str, np.ndarray]:
    """Per-target chamfer (x100) of top-1, best of top-10 and, optionally, the oracle and the
    mean over all sources (``random``: what a source drawn at random would give).

    With ``refine_steps`` only the top-1 is refined and best-of-top-10 is NaN.

    Args:
        retrieval: ``(target, modality) -> (B, S)`` distances to every source.
        deformation: the model whose deformation module deforms (None: no deformation).
        refine_steps: inner deformation optimisation steps (0: none).
    """
    generator = torch.Generator().manual_seed(0)
    k = min(10, len(sources))
    if deformation is not None:
        global_code, part_code = deformation.deformation.encode_sources(sources)
    out: dict[str, list] = {"top1": [], "top10": [], "oracle": [], "oracle_source": [], "random": [], "ranking": []}
    for row in range(len(targets)):
        target, truth = target_batch(targets, torch.tensor([row]), modality, n_points, 0.0, generator)
        distance = retrieval(target, modality)[0]
        ranking = torch.argsort(distance)
        out["ranking"].append(ranking.numpy())
        target_code = deformation.deformation.encode_target(target, modality) if deformation is not None else None

        def fits(rows: torch.Tensor, refine: int = 0, truth=truth, target_code=target_code) -> torch.Tensor:
            chosen = sources.select(rows)
            if deformation is None:
                return chamfer_distance(chosen.points, truth.expand(len(rows), -1, -1))
            boxes = network_boxes(
                deformation, chosen, global_code[rows], part_code[rows], target_code.expand(len(rows), -1)
            )
            if refine:
                boxes = refine_boxes(chosen, boxes, truth.expand(len(rows), -1, -1), steps=refine)
            return chamfer_distance(deformed_points(chosen, boxes), truth.expand(len(rows), -1, -1))

        top = fits(ranking[: 1 if refine_steps else k], refine_steps)  # refinement is costly: top-1 only
        out["top1"].append(float(top[0]) * 100)
        out["top10"].append(float("nan") if refine_steps else float(top.min()) * 100)
        if oracle:
            every = torch.cat([fits(torch.arange(s, min(s + 256, len(sources)))) for s in range(0, len(sources), 256)])
            out["oracle"].append(float(every.min()) * 100)
            out["oracle_source"].append(int(every.argmin()))
            out["random"].append(float(every.mean()) * 100)  # expected fit of a source drawn at random
    return {key: np.asarray(value) for key, value in out.items() if len(value)}


@torch.no_grad()
def evaluate_pipeline(
    sources: SourceTensors, targets: Targets, n_points: int, pool: int = 5, steps: int = 200
) -> dict[str, np.ndarray]:
    """The learning-free pipeline on point targets, as ``bench/ood.py``'s pipeline row: ``fit_cloud`` with no
    model (every source placed per axis on the target's box, ranked by coarse chamfer, the best ``pool``
    refined from that placement for up to ``steps``, the cloud's heading trusted). Per target, chamfer x100 of:

    - ``top1``: the pipeline's fit (Table 1; refined, so compare it with Ours+IDO as well as Ours);
    - ``oracle``: the best per-axis placement of any source, unrefined (Table 2: oracle retrieval with the
      placement as the deformation; the per-axis box oracle), ``oracle_source`` which, ``random`` the mean;
    - ``ranking``: the pipeline's coarse order of all sources (``placement_scores``, as ``fit_cloud`` ranks; for
      recall@k against that oracle).
    """
    generator = torch.Generator().manual_seed(0)
    out: dict[str, list] = {"top1": [], "top10": [], "oracle": [], "oracle_source": [], "random": [], "ranking": []}
    for row in range(len(targets)):
        target, truth = target_batch(targets, torch.tensor([row]), "points", n_points, 0.0, generator)
        fit = fit_cloud(None, sources, None, target[0], torch.zeros(1), top_k=1, pool=pool, steps=steps)
        chosen = sources.select(fit.rows[:1])
        out["top1"].append(float(chamfer_distance(deformed_points(chosen, fit.boxes[:1]), truth)[0]) * 100)
        out["top10"].append(float("nan"))
        placed = box_placement(sources, target_extent(target)[0])
        every = chamfer_distance(deformed_points(sources, placed), truth.expand(len(sources), -1, -1))
        coarse = placement_scores(sources, target_extent(target)[0], target.expand(len(sources), -1, -1))[1]
        out["oracle"].append(float(every.min()) * 100)
        out["oracle_source"].append(int(every.argmin()))
        out["random"].append(float(every.mean()) * 100)
        out["ranking"].append(torch.argsort(coarse).numpy())
    return {key: np.asarray(value) for key, value in out.items()}


def pipeline_results(sources: SourceTensors, targets: Targets, n_points: int, steps: int = 200) -> dict:
    """``evaluate_pipeline`` as one seed's ``points/Pipeline`` entry (JSON-able, with recall@k)."""
    scores = evaluate_pipeline(sources, targets, n_points, steps=steps)
    entry = {key: value.tolist() for key, value in scores.items() if key != "ranking"}
    entry["recall"] = {str(k): recall_at(scores["ranking"], scores["oracle_source"], k) for k in (1, 5, 10)}
    return entry


@torch.no_grad()
def predict_one(
    sources: SourceTensors, targets: Targets, row: int, modality: str, n_points: int, retrieval, model: JointModel
) -> tuple[int, np.ndarray, float]:
    """Top-1 source, its deformed boxes (K, 6) in the target's frame, and the chamfer x100."""
    target, truth = target_batch(
        targets, torch.tensor([row]), modality, n_points, 0.0, torch.Generator().manual_seed(0)
    )
    best = int(torch.argmin(retrieval(target, modality)[0]))
    chosen = sources.select(torch.tensor([best]))
    global_code, part_code = model.deformation.encode_sources(chosen)
    boxes = network_boxes(model, chosen, global_code, part_code, model.deformation.encode_target(target, modality))
    fit = float(chamfer_distance(deformed_points(chosen, boxes), truth)[0]) * 100
    return best, boxes[0, : int(chosen.part_mask.sum())].numpy(), fit


def qualitative_figure(
    path: Path,
    dataset: Path,
    data: TrainingData,
    targets: Targets,
    test_rows: list[int],
    categories: list[str],
    n_points: int,
    methods: dict[str, tuple],
    modalities: list[str],
    seed: int = 0,
) -> Path:
    """Figure 4 style: for one random test target per category and modality,
    the input, each method's retrieved source and its deformation, and the truth.

    Args:
        methods: label -> (retrieval, model whose deformation module deforms).
    """
    from backend.export import part_meshes
    from training import qualitative as q

    train_index, test_index = load_index(dataset / "index-train"), load_index(dataset / "index-test")
    index_row = {Path(r.path).stem: i for i, r in enumerate(train_index.sources)}
    rng = np.random.default_rng(seed)
    rows = []
    for modality in modalities:
        if modality == "images" and targets.images is None:
            continue
        for category in CATEGORIES:
            candidates = [i for i, c in enumerate(categories) if c == category]
            if not candidates:
                continue
            row = int(rng.choice(candidates))
            if modality == "points":
                target, _ = target_batch(
                    targets, torch.tensor([row]), "points", n_points, 0.0, torch.Generator().manual_seed(0)
                )
                panels = [("input: points", q.render_points(target[0].numpy()))]
            else:
                panels = [("input: image", targets.images[row, 0].permute(1, 2, 0).numpy())]
            for label, (retrieval, model) in methods.items():
                best, boxes, fit = predict_one(data.sources, targets, row, modality, n_points, retrieval, model)
                source_row = index_row[data.source_names[best]]
                panels.append(
                    (
                        f"{label}: retrieved",
                        q.render_mesh(
                            *q.boxed_mesh(train_index, source_row, q.normalised_boxes(train_index, source_row))
                        ),
                    )
                )
                panels.append(
                    (f"{label}: deformed {fit:.2f}", q.render_mesh(*q.boxed_mesh(train_index, source_row, boxes)))
                )
            truth = test_index.load_source(test_rows[row])
            lo, hi = truth.points.min(0), truth.points.max(0)
            centre, scale = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
            meshes = part_meshes(test_index, test_rows[row])
            vertices = np.concatenate([(np.asarray(m.vertices) - centre) / scale for m in meshes])
            offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
            faces = np.concatenate([np.asarray(m.faces) + o for m, o in zip(meshes, offsets)])
            panels.append(("truth", q.render_mesh(vertices, faces, np.full((len(faces), 3), 0.7))))
            rows.append({"label": f"{category} ({modality})", "panels": panels})
    return q.write_figure(path, rows)


def code_retrieval(model: JointModel, codes: torch.Tensor):
    """``(target, modality) -> (B, S)`` distances from the model's target codes to the sources' ``codes`` (S, E)."""
    return lambda target, modality: embedding_distance(model, target, modality, codes)


def joint_retrieval(model: JointModel, sources: SourceTensors):
    """``code_retrieval`` in the model's own retrieval space (sources embedded once)."""
    return code_retrieval(model, model.retrieval.embed_sources(sources)[0])


def mds_model(
    base: TrainConfig, data: TrainingData, modalities: list[str], steps: int, seed: int
) -> tuple[JointModel, torch.Tensor]:
    """Baseline R trained for ``steps`` (then ``base.image_alignment_steps``
    image-only steps, as the joint methods' image alignment) with ``base``'s
    inputs and schedule: its model and the sources' (S, d) MDS coordinates."""
    with torch.enable_grad():
        return train_mds_retrieval(
            data.sources,
            data.train,
            base.model,
            modalities,
            steps,
            seed=seed,
            noise=base.noise,
            partial=base.partial,
            lr=base.lr,
            lr_decay=base.lr_decay,
            image_steps=base.image_alignment_steps,
        )


def mds_retrieval(base: TrainConfig, data: TrainingData, modalities: list[str], steps: int, seed: int):
    """Baseline R (``mds_model``) as ``code_retrieval`` in its MDS space."""
    return code_retrieval(*mds_model(base, data, modalities, steps, seed))


def recall_at(ranking: np.ndarray, best: np.ndarray, k: int) -> float:
    """Share of targets whose oracle-best source is among the first k retrieved."""
    return float(np.mean([b in r[:k] for r, b in zip(ranking, best)]))


def train_methods(
    base: TrainConfig, data: TrainingData, out: Path, seed: int, warmup: int, steps: int
) -> dict[str, JointModel]:
    """Train DF, Uniform, Ours and DAR with one budget: each module gets
    ``warmup + steps`` updates of its own (retrieval: ``steps``).

    All start from one deformation warm-up on random pairs (``warmup``
    steps, shared, so it is trained once): DF goes on with random pairs for
    ``steps``; Uniform and Ours continue jointly for ``2 * steps`` alternating
    steps (uniform / P_R-sampled candidates), that is ``steps`` deformation
    and ``steps`` retrieval updates; DAR trains only a retrieval space, for
    ``steps`` updates, against the finished DF, frozen. So Ours costs what
    DAR+DF costs. Every method is read back from its last step (no selection
    on validation). Runs that exist are resumed (a finished one is kept).
    """
    if warmup < 1:
        raise ValueError("the evaluation needs warmup >= 1: Uniform and Ours start from the deformation warm-up")

    def run(name: str, **options) -> TrainConfig:
        return TrainConfig(**{**base.__dict__, "out": str(out / name), "seed": seed, "val_every": 10**9, **options})

    warm = run(
        "warmup", mode="deformation", steps=warmup, image_alignment_steps=0
    )  # DF resumes it: align only at the end
    train(warm, data)
    df = out / "df" / "last.pt"
    if not df.exists():  # DF resumes the warm-up
        df.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "warmup" / "last.pt", df)
    train(run("df", mode="deformation", steps=warmup + steps), data)
    train(run("uniform", sampling="uniform", init=str(out / "warmup" / "last.pt"), warmup=0, steps=2 * steps), data)
    train(run("ours", init=str(out / "warmup" / "last.pt"), warmup=0, steps=2 * steps), data)
    train(run("dar", mode="retrieval", init=str(df), steps=steps), data)
    return {
        name: load_checkpoint(out / folder / "last.pt")[0]
        for name, folder in (("DF", "df"), ("Uniform", "uniform"), ("Ours", "ours"), ("DAR", "dar"))
    }


def run(config: EvalConfig) -> dict:
    started = time.time()
    base = TrainConfig.from_toml(
        config.train_config,
        data=config.data,
        steps=config.steps,
        warmup=config.warmup,
        modalities=config.modalities,
        max_minutes=0,
    )
    dataset = Path(config.data)
    data = prepare(
        dataset,
        base.source_fraction,
        base.val_fraction,
        base.model.source_points,
        base.views if "images" in config.modalities else 0,
    )
    targets, categories, structures, test_rows = held_out_targets(
        dataset, base.views if "images" in config.modalities else 0, config.max_targets
    )
    meta = json.loads((dataset / "meta.json").read_text())["shapes"]
    train_structures = {r["structure"] for r in meta if r["split"] == "train"}
    unseen = np.array([s not in train_structures for s in structures])
    results: dict = {
        "config": asdict(config),
        "seeds": {},
        "seed_seconds": {},
        "categories": categories,
        "unseen_structure": unseen.tolist(),
    }
    n = base.model.n_points
    pipeline = None
    for seed in config.seeds:
        out = Path(config.out) / f"seed{seed}"
        cached = _cached_seed(out / "results.json", config)
        if cached is not None and seed != config.seeds[0]:  # the first seed's models also draw the figure
            print(f"seed {seed}: results read from {out / 'results.json'}", flush=True)
            results["seeds"][str(seed)] = cached
            results["seed_seconds"][str(seed)] = _cached_seconds(out / "results.json")
            continue
        seed_started = time.time()
        _claim_seed_folder(out, config)
        models = train_methods(base, data, out, seed, config.warmup, config.steps)
        with torch.no_grad():
            retrievals = {
                "R": mds_retrieval(base, data, config.modalities, config.warmup + config.steps, seed),
                **{name: joint_retrieval(models[name], data.sources) for name in ("DAR", "Uniform", "Ours")},
            }
        methods = {
            "R": (retrievals["R"], None, 0, False),
            "R+DF": (retrievals["R"], models["DF"], 0, False),
            "DAR": (retrievals["DAR"], None, 0, False),
            "DAR+DF": (retrievals["DAR"], models["DF"], 0, True),  # the oracle here is DF's (Table 2)
            "Uniform": (retrievals["Uniform"], models["Uniform"], 0, True),
            "Ours": (retrievals["Ours"], models["Ours"], 0, True),
            "Ours+IDO": (retrievals["Ours"], models["Ours"], config.refine_steps, False),
        }
        seed_results = cached or {}
        for modality in config.modalities if cached is None else ():
            if modality == "images" and targets.images is None:
                continue
            for method, (retrieval, deformation, refine, oracle) in methods.items():
                if refine and modality != "points":
                    continue
                scores = evaluate_method(data.sources, targets, modality, n, retrieval, deformation, refine, oracle)
                seed_results[f"{modality}/{method}"] = {
                    key: value.tolist() for key, value in scores.items() if key != "ranking"
                }
                if oracle:
                    seed_results[f"{modality}/{method}"]["recall"] = {
                        str(k): recall_at(scores["ranking"], scores["oracle_source"], k) for k in (1, 5, 10)
                    }
        if "points" in config.modalities and "points/Pipeline" not in seed_results:
            if pipeline is None:  # learning-free: one evaluation serves every seed
                pipeline = pipeline_results(data.sources, targets, n, config.pipeline_steps)
            seed_results["points/Pipeline"] = pipeline
        if cached is None:
            _write_json(
                out / "results.json",
                {"key": _seed_key(config), "results": seed_results, "seconds": time.time() - seed_started},
            )
        results["seeds"][str(seed)] = seed_results
        results["seed_seconds"][str(seed)] = _cached_seconds(out / "results.json")
        if seed == config.seeds[0]:
            figure = {"R+DF": (retrievals["R"], models["DF"]), "Ours": (retrievals["Ours"], models["Ours"])}
            qualitative_figure(
                Path(config.docs) / "results_examples.png",
                dataset,
                data,
                targets,
                test_rows,
                categories,
                n,
                figure,
                config.modalities,
                seed,
            )
    results["seconds"] = time.time() - started
    Path(config.out).mkdir(parents=True, exist_ok=True)
    _write_json(Path(config.out) / "results.json", results)
    write_report(results, Path(config.docs))
    return results


def pipeline_only(config: EvalConfig) -> str:
    """The learning-free pipeline's Table 1 and Table 2 rows (point targets) on the configuration's test split,
    with the sources every method of the evaluation uses; ``<out>/pipeline.json`` holds every number."""
    started = time.time()
    base = TrainConfig.from_toml(config.train_config, data=config.data)
    dataset = Path(config.data)
    data = prepare(dataset, base.source_fraction, base.val_fraction, base.model.source_points, 0)
    targets, categories, _, _ = held_out_targets(dataset, 0, config.max_targets)
    entry = pipeline_results(data.sources, targets, base.model.n_points, config.pipeline_steps)
    categories = np.asarray(categories)
    mean = lambda key, mask: float(np.mean(np.asarray(entry[key])[mask]))  # noqa: E731
    every = np.ones(len(categories), bool)
    table1 = " | ".join(f"{mean('top1', categories == c):.3f}" for c in CATEGORIES)
    table2 = " | ".join(f"{mean('oracle', categories == c):.3f}" for c in CATEGORIES)
    recalls = " | ".join(f"{entry['recall'][str(k)]:.3f}" for k in (1, 5, 10))
    seconds = time.time() - started
    _write_json(
        Path(config.out) / "pipeline.json",
        {"categories": categories.tolist(), "results": entry, "seconds": seconds, "sources": len(data.sources)},
    )
    return "\n".join(
        [
            f"{len(targets)} test targets, {len(data.sources)} sources, {seconds:.0f} s",
            f"Table 1 (points): | Pipeline | {table1} | {mean('top1', every):.3f} | – |",
            f"Table 2 (points): | Per-axis placement | {table2} | {recalls} |",
        ]
    )


def _seed_key(config: EvalConfig) -> dict:
    """What one seed's numbers depend on, besides the seed: a cached seed is
    reused only when this matches. The training recipe counts by its
    contents (the TOML the config names may have been edited since)."""
    key = {k: v for k, v in asdict(config).items() if k not in ("seeds", "docs", "notes", "out")}
    key["train_recipe"] = json.loads(json.dumps(TrainConfig.from_toml(config.train_config).to_json()))
    return key


def _claim_seed_folder(out: Path, config: EvalConfig) -> None:
    """Mark ``out`` as holding this configuration's runs, or refuse when it
    holds another's: training resumes what it finds, so stale runs would
    be carried into the new numbers."""
    marker = out / "key.json"
    key = _seed_key(config)
    if marker.is_file():
        if json.loads(marker.read_text()) != key:
            raise ValueError(
                f"{out} holds runs of another configuration (see {marker}); move it away or pick another --out"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} holds runs of unknown configuration; move it away or pick another --out")
    _write_json(marker, key)


def _cached_seed(path: Path, config: EvalConfig) -> dict | None:
    """A seed's results written by an earlier run of the same configuration (None: none, or stale)."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["results"] if saved.get("key") == _seed_key(config) else None


def _cached_seconds(path: Path) -> float:
    """Wall time that trained and evaluated the seed cached at ``path``."""
    return float(json.loads(path.read_text()).get("seconds", float("nan")))


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="TOML with EvalConfig fields")
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--docs")
    parser.add_argument("--steps", type=int)
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(s) for s in text.split(",")],
        help="comma-separated, e.g. 0,1,2 (overrides the config)",
    )
    parser.add_argument("--max-targets", type=int, help="evenly spread test targets to use (0: all)")
    parser.add_argument(
        "--pipeline-only",
        action="store_true",
        help="only the learning-free pipeline's rows on the test split: printed, and written to <out>/pipeline.json",
    )
    args = parser.parse_args(argv)
    config = EvalConfig.from_toml(
        args.config,
        data=args.data,
        out=args.out,
        docs=args.docs,
        steps=args.steps,
        seeds=args.seeds,
        max_targets=args.max_targets,
    )
    if args.pipeline_only:
        print(pipeline_only(config))
        return 0
    results = run(config)
    print(f"wrote {Path(config.docs) / 'results.md'} in {results['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
