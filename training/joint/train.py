"""The joint training loop: warm-up, then alternating retrieval and deformation updates.

Runs on one CPU or GPU as it is, and under ``torchrun`` with
DistributedDataParallel (gloo on CPU, NCCL on CUDA): each process draws its
own targets and gradients are averaged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from backend.model.checkpoint import load_checkpoint, save_checkpoint
from backend.model.geometry import box_symmetry_loss, chamfer_distance, normalisation
from backend.model.inference import PREFILTER_POINTS, embedding_distance, network_boxes
from backend.model.networks import JointModel, ModelConfig, deformed_points
from backend.model.placement import placement_scores, target_extent
from backend.model.sources import SourceTensors
from backend.model.viewpoint import visible_from
from training.joint.data import (
    Targets,
    TrainingData,
    augment_sources,
    log_uniform,
    prepare,
    target_sources,
    with_randomised_views,
)
from training.joint.objectives import (
    cross_modal_loss,
    deformation_loss,
    embedding_loss,
    ranking_alignment_loss,
    sample_candidates,
    soft_probabilities,
)


@dataclass
class TrainConfig:
    data: str = "data/default"
    out: str = "runs/default"
    steps: int = 3000
    warmup: int = 400
    batch: int = 16
    candidates: int = 10
    sigma0: float = 100.0
    lr: float = 1e-3
    lr_retrieval: float = 0.0  # 0: same as lr
    # Share of the run's last steps over which both learning rates fall
    # linearly to zero (0: constant).
    lr_decay: float = 0.0
    symmetry_weight: float = 1.0
    positivity_weight: float = 10.0
    # Steps after ``steps`` that fit each module's image encoder to the codes
    # its (then fixed) point encoder gives the same shape's clean points: a
    # target for every training image, where L_emb and L_def give weaker ones.
    image_alignment_steps: int = 0
    # Image targets rendered afresh for every batch with domain randomisation (materials, lights, field of
    # view, elevation and azimuth, background colour or transparency, crop and placement in the frame:
    # ``training.data.randomise``) instead of the data set's fixed views; off in the shipped recipe.
    image_randomisation: bool = False
    # What the retrieval module's image encoder is aligned to: "points", the code its point encoder gives the
    # shape's clean points (the target side of the space), or "source", the place its source encoder gives the
    # same shape as a library source (the side images are ranked against; for the shipped model, whose point
    # targets have their own encoder, that place is far more faithful: docs/model.md).
    image_teacher: str = "points"
    # The ranking term's scale in the alignment stage (0: sigma0). The shipped model's sources lie 0.03 apart in
    # a cloud 0.13 across at radius 8, where sigma0 = 100 makes P_R uniform and the term inert.
    alignment_sigma: float = 0.0
    noise: float = 0.01
    partial: float = 0.5  # share of point targets given as single-view scans
    # Training for transfer to libraries made elsewhere (1.0 / empty: off). Point targets and the
    # candidate sources are scaled per axis by a random factor in [1/axis_scale, axis_scale]
    # (then renormalised); each candidate part's size by one in [1/part_jitter, part_jitter],
    # projected back onto its source's connectivity subspace (``augment_sources``); shapes of the
    # ``held_out_structures`` families (e.g. "chair/sled", see ``in_families``) are neither
    # sources nor training or validation targets.
    axis_scale: float = 1.0
    part_jitter: float = 1.0
    held_out_structures: tuple[str, ...] = ()
    # "retrieval" (ours), "uniform" (the ablation) or "placement": for point targets, the sources whose
    # per-axis placement fits best (``placement_candidates``: the ones a fit refines), in every phase.
    sampling: str = "retrieval"
    # "joint" (ours); "deformation": random pairs only (the DF baseline);
    # "retrieval": retrieval updates only against a frozen deformation module
    # loaded from ``init`` (deformation-aware retrieval, DAR).
    mode: str = "joint"
    init: str = ""
    refresh_every: int = 25
    val_every: int = 200
    save_every: int = 100
    max_minutes: float = 0.0  # 0: no wall-time limit
    modalities: tuple[str, ...] = ("points", "images")
    views: int = 2
    source_fraction: float = 0.35
    val_fraction: float = 0.1
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text()) if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        model = ModelConfig(**data.pop("model", {}))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        for name in ("modalities", "held_out_structures"):
            if name in data:
                data[name] = tuple(data[name])
        return cls(model=model, **data)

    def to_json(self) -> dict:
        return asdict(self)


def device_for_rank() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def target_batch(
    targets: Targets,
    rows: torch.Tensor,
    modality: str,
    n_points: int,
    noise: float,
    generator: torch.Generator,
    partial: float = 0.0,
    axis_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network input and true shape (B, n_points, 3), in the input's normalised frame.

    Point targets are a random subset of the clean samples, with probability
    ``partial`` only what one random viewpoint sees (a single scan), plus
    Gaussian noise, re-normalised by their own box (as at inference); the
    true shape is always the whole surface. With ``axis_scale`` > 1 each point
    target (input and truth) is first stretched per axis by a random factor in
    [1/axis_scale, axis_scale]. Image targets are one random view, and their
    true shape is the clean samples.
    """
    clean = targets.points[rows]
    if modality == "points" and axis_scale > 1.0:
        clean = clean * log_uniform((len(rows), 1, 3), axis_scale, generator)
    pick = torch.stack([torch.randperm(clean.shape[1], generator=generator)[:n_points] for _ in range(len(rows))])
    truth = torch.gather(clean, 1, pick.unsqueeze(-1).expand(-1, -1, 3))
    if modality == "points":
        seen = truth
        scans = torch.rand(len(rows), generator=generator) < partial
        if scans.any():
            azimuth = torch.rand(len(rows), generator=generator) * 2 * math.pi
            elevation = torch.rand(len(rows), generator=generator) * math.radians(45)
            direction = torch.stack(
                [
                    torch.sin(azimuth) * torch.cos(elevation),
                    -torch.cos(azimuth) * torch.cos(elevation),
                    torch.sin(elevation),
                ],
                dim=-1,
            )
            visible = visible_from(clean, direction)
            weights = visible.float() + 1e-6  # draw from the visible points
            picked = torch.multinomial(weights, n_points, replacement=True, generator=generator)
            scanned = torch.gather(clean, 1, picked.unsqueeze(-1).expand(-1, -1, 3))
            seen = torch.where(scans.view(-1, 1, 1), scanned, truth)
        scale = torch.rand(len(rows), 1, 1, generator=generator) * noise
        noisy = seen + torch.randn(seen.shape, generator=generator) * scale
        centre, diagonal = normalisation(noisy)
        frame = lambda x: (x - centre.unsqueeze(1)) / diagonal.view(-1, 1, 1)  # noqa: E731
        return frame(noisy), frame(truth)
    if targets.render is not None:
        return targets.render(rows, generator).float() / 255.0, truth
    view = torch.randint(targets.images.shape[1], (len(rows),), generator=generator)
    return targets.images[rows, view].float() / 255.0, truth


@torch.no_grad()
def placement_candidates(sources: SourceTensors, target: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) the sources whose per-axis placement on each of B point targets (B, N, 3) ranks best, by
    ``placement_scores`` (coarse chamfer charged for implausible proportions) on a few points: the sources a fit
    ranks first and refines (``fit_cloud``)."""
    few = sources.first_points(PREFILTER_POINTS)
    scores = torch.stack(
        [
            placement_scores(few, extent, one.expand(len(few), -1, -1), n_points=PREFILTER_POINTS)[1]
            for one, extent in zip(target, target_extent(target))
        ]
    )
    return torch.topk(-scores, k, dim=-1).indices


def fit_pairs(
    model: JointModel, deformation, target, modality, sources: SourceTensors, pair_source, pair_target, truth
):
    """Deformed boxes, chamfer to the true shape and symmetry error of each pair."""
    boxes = deformation(target, modality, sources, pair_source, pair_target)
    chosen = sources.select(pair_source)
    fit = chamfer_distance(deformed_points(chosen, boxes), truth[pair_target])
    symmetry = box_symmetry_loss(boxes, chosen.mirror, chosen.axis)
    shortfall = torch.relu(chosen.min_half.view(-1, 1, 1) - boxes[..., 3:]) * chosen.part_mask.unsqueeze(-1)
    return boxes, fit, symmetry, shortfall.square().sum((1, 2))


@torch.no_grad()
def oracle_chamfer(
    model: JointModel,
    sources: SourceTensors,
    targets: Targets,
    modality: str,
    n_points: int,
    seed: int = 0,
    reduce: str = "min",
) -> float:
    """Mean over targets of the best deformed fit over *all* sources, x 100
    (oracle retrieval: the deformation module's own quality, Table 2);
    ``reduce="mean"`` averages over sources instead (the warm-up objective)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    global_code, part_code = model.deformation.encode_sources(sources)
    best = []
    for row in range(len(targets)):
        target, truth = target_batch(targets, torch.tensor([row]), modality, n_points, 0.0, generator)
        code = model.deformation.encode_target(target, modality).expand(len(sources), -1)
        boxes = network_boxes(model, sources, global_code, part_code, code)
        fits = chamfer_distance(deformed_points(sources, boxes), truth.expand(len(sources), -1, -1))
        best.append(fits.min() if reduce == "min" else fits.mean())
    model.train()
    return float(torch.stack(best).mean()) * 100


@torch.no_grad()
def evaluate(
    model: JointModel,
    sources: SourceTensors,
    targets: Targets,
    modality: str,
    n_points: int,
    batch: int = 32,
    seed: int = 0,
) -> dict:
    """Top-1 retrieval then deformation on every target: mean chamfer x 100.

    Also reports the retrieved source before deforming
    (``retrieved_undeformed``) to show what deformation adds.
    """
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    embeddings, _ = model.retrieval.embed_sources(sources)
    global_code, part_code = model.deformation.encode_sources(sources)
    fits, raw = [], []
    for start in range(0, len(targets), batch):
        rows = torch.arange(start, min(start + batch, len(targets)))
        target, truth = target_batch(targets, rows, modality, n_points, 0.0, generator)
        target, truth = target.to(device), truth.to(device)
        best = embedding_distance(model, target, modality, embeddings).argmin(dim=1)
        chosen = sources.select(best)
        target_code = model.deformation.encode_target(target, modality)
        boxes = network_boxes(model, chosen, global_code[best], part_code[best], target_code)
        fits.append(chamfer_distance(deformed_points(chosen, boxes), truth))
        raw.append(chamfer_distance(chosen.points, truth))
    model.train()
    return {
        "chamfer_x100": float(torch.cat(fits).mean()) * 100,
        "retrieved_undeformed_x100": float(torch.cat(raw).mean()) * 100,
    }


class Logger:
    """Progress to the terminal (or plain lines when not one) and a JSONL log."""

    def __init__(self, path: Path, total: int, enabled: bool):
        self.enabled = enabled
        self.file = open(path, "a") if enabled else None
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr)

    def step(self, step: int, record: dict, every: int = 25) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        if step % every == 0:
            self.file.flush()
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            if self.bar is not None:
                self.bar.set_postfix_str(text[-120:], refresh=False)
            else:
                print(text, flush=True)
        if self.bar is not None:
            self.bar.update(step + 1 - self.bar.n)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.bar is not None:
            self.bar.close()


def train(config: TrainConfig, data: TrainingData | None = None) -> Path:
    """Train (or resume) and return the path of the best checkpoint."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    device = device_for_rank()
    torch.manual_seed(config.seed)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_json(), indent=1))

    if data is None:
        views = config.views if "images" in config.modalities else 0
        if rank == 0:  # one process indexes; the others read the index it wrote
            data = prepare(
                Path(config.data),
                config.source_fraction,
                config.val_fraction,
                config.model.source_points,
                views,
                held_out_structures=config.held_out_structures,
            )
        if distributed:
            dist.barrier()
        if rank != 0:
            data = prepare(
                Path(config.data),
                config.source_fraction,
                config.val_fraction,
                config.model.source_points,
                views,
                build=False,
                held_out_structures=config.held_out_structures,
            )
    if config.image_randomisation and "images" in config.modalities:
        data.train = with_randomised_views(data.train, Path(config.data), config.model.image_size, config.seed)
    modalities = [
        m for m in config.modalities if m == "points" or data.train.images is not None or data.train.render is not None
    ]
    sources = data.sources.to(device)
    model = JointModel(config.model).to(device)
    optim_r = torch.optim.Adam(model.retrieval.parameters(), lr=config.lr_retrieval or config.lr)
    optim_d = torch.optim.Adam(model.deformation.parameters(), lr=config.lr)
    start, best = 0, math.inf
    last = out / "last.pt"
    if config.mode not in ("joint", "deformation", "retrieval"):
        raise ValueError(f"unknown training mode {config.mode!r}")
    if config.init and not last.exists():
        model.load_state_dict(load_checkpoint(config.init, device)[0].state_dict())
    if last.exists():
        resumed, extra, state = load_checkpoint(last, device)
        model.load_state_dict(resumed.state_dict())
        if state:
            optim_r.load_state_dict(state["optim_r"])
            optim_d.load_state_dict(state["optim_d"])
        start, best = extra["step"] + 1, extra.get("best", math.inf)
    model.train()
    retrieval, deformation = model.retrieval, model.deformation
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        retrieval = DistributedDataParallel(model.retrieval, device_ids=ids, find_unused_parameters=True)
        deformation = DistributedDataParallel(model.deformation, device_ids=ids, find_unused_parameters=True)

    generator = torch.Generator().manual_seed(config.seed * 1000 + rank * 7919 + start)
    logger = Logger(out / "log.jsonl", config.steps, rank == 0)
    started = time.time()
    cache = None
    k = min(config.candidates, len(sources))
    for step in range(start, config.steps):
        modality = modalities[(step // 2) % len(modalities)]
        rows = torch.randint(len(data.train), (config.batch,), generator=generator)
        target, truth = target_batch(
            data.train,
            rows,
            modality,
            config.model.n_points,
            config.noise,
            generator,
            config.partial,
            config.axis_scale,
        )
        target, truth = target.to(device), truth.to(device)
        warm = config.mode == "deformation" or (config.mode == "joint" and step < config.warmup)
        if config.sampling == "placement" and modality == "points":
            candidates = placement_candidates(sources, target, k)
        elif warm or config.sampling == "uniform":
            candidates = torch.stack(
                [torch.randperm(len(sources), generator=generator)[:k] for _ in range(config.batch)]
            ).to(device)
        else:
            if cache is None or step % config.refresh_every == 0:
                with torch.no_grad():
                    cache = model.retrieval.embed_sources(sources)[0]
            with torch.no_grad():
                logits = -torch.cdist(model.retrieval.embed_target(target, modality), cache).square() / config.sigma0**2
            candidates = sample_candidates(logits.cpu(), k, generator).to(device)
        unique, inverse = torch.unique(candidates, return_inverse=True)
        subset = sources.select(unique)
        if config.axis_scale > 1.0 or config.part_jitter > 1.0:
            subset = augment_sources(subset, generator, config.axis_scale, config.part_jitter)
        pair_source = inverse.reshape(-1)
        pair_target = torch.arange(config.batch, device=device).repeat_interleave(k)
        update_retrieval = config.mode == "retrieval" or (not warm and step % 2 == 1)
        record = {
            "step": step,
            "modality": modality,
            "phase": "warmup" if warm else ("retrieval" if update_retrieval else "deformation"),
        }
        for optimiser, rate in ((optim_r, config.lr_retrieval or config.lr), (optim_d, config.lr)):
            for group in optimiser.param_groups:
                group["lr"] = rate * learning_rate_factor(step, config.steps, config.lr_decay)
        if update_retrieval:
            with torch.no_grad():
                _, fit, _, _ = fit_pairs(
                    model, model.deformation, target, modality, subset, pair_source, pair_target, truth
                )
            e_t, e_s, sigma = retrieval(target, modality, subset)
            distance = (e_t[pair_target] - e_s[pair_source]).norm(dim=-1).view(config.batch, k)
            loss = embedding_loss(
                distance, fit.view(config.batch, k), sigma[pair_source].view(config.batch, k), config.sigma0
            )
            optim_r.zero_grad(set_to_none=True)
            loss.backward()
            optim_r.step()
            with torch.no_grad():  # how peaked the two distributions are (1/K: uniform, 1: one-hot)
                peak_r = soft_probabilities(distance, config.sigma0).max(-1).values.mean()
                peak_fit = (
                    soft_probabilities(fit.view(config.batch, k), sigma[pair_source].view(config.batch, k))
                    .max(-1)
                    .values.mean()
                )
            record.update(
                loss_emb=float(loss.detach()),
                sigma=float(sigma.detach().mean()),
                distance=float(distance.detach().mean()),
                peak_r=float(peak_r),
                peak_fit=float(peak_fit),
            )
        else:
            if warm or config.sampling == "uniform":
                weights = torch.full((config.batch, k), 1.0 / k, device=device)
            else:
                with torch.no_grad():
                    e_t, e_s, _ = model.retrieval(target, modality, subset)
                    distance = (e_t[pair_target] - e_s[pair_source]).norm(dim=-1).view(config.batch, k)
                    weights = soft_probabilities(distance, config.sigma0)
            _, fit, symmetry, shortfall = fit_pairs(
                model, deformation, target, modality, subset, pair_source, pair_target, truth
            )
            loss = deformation_loss(weights, fit.view(config.batch, k))
            loss = loss + config.symmetry_weight * (weights.reshape(-1) * symmetry).sum() / config.batch
            loss = loss + config.positivity_weight * shortfall.mean()
            optim_d.zero_grad(set_to_none=True)
            loss.backward()
            optim_d.step()
            record.update(loss_def=float(loss.detach()), fit_x100=float(fit.detach().mean()) * 100)
        logger.step(step, record)

        out_of_time = config.max_minutes > 0 and (time.time() - started) / 60 > config.max_minutes
        if distributed:  # every rank stops at the same step
            flag = torch.tensor([float(out_of_time)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        last_step = step == config.steps - 1 or out_of_time
        if rank == 0 and ((step + 1) % config.val_every == 0 or last_step) and len(data.val):
            scored = [m for m in modalities if m == "points" or data.val.images is not None]
            scores = {m: evaluate(model, sources, data.val, m, config.model.n_points) for m in scored}
            score = float(np.mean([s["chamfer_x100"] for s in scores.values()]))
            logger.step(
                step,
                {
                    "step": step,
                    "phase": "validation",
                    "score": score,
                    **{f"val_{m}": s["chamfer_x100"] for m, s in scores.items()},
                },
                every=1,
            )
            if score < best:
                best = score
                save_checkpoint(
                    out / "best.pt",
                    model,
                    {"step": step, "score": score, "validation": scores, "config": config.to_json()},
                )
        if rank == 0 and ((step + 1) % config.save_every == 0 or last_step):
            state = {"optim_r": optim_r.state_dict(), "optim_d": optim_d.state_dict()}
            save_checkpoint(last, model, {"step": step, "best": best, "config": config.to_json()}, state)
        if out_of_time:
            break
    stopped_early = (
        start < config.steps and step < config.steps - 1
    )  # the wall-time limit: align once the main steps are done
    if (
        "images" in modalities
        and config.image_alignment_steps > 0
        and not stopped_early
        and max(start, config.steps) < config.steps + config.image_alignment_steps
    ):
        align_images(
            model,
            retrieval,
            deformation,
            data.train,
            sources,
            config,
            max(start, config.steps),
            generator,
            logger,
            rank == 0,
            distributed,
        )
    logger.close()
    if distributed:
        dist.barrier()
    return out / "best.pt"


def align_images(
    model: JointModel,
    retrieval,
    deformation,
    targets: Targets,
    sources: SourceTensors,
    config: TrainConfig,
    start: int,
    generator: torch.Generator,
    logger,
    main_process: bool,
    distributed: bool,
) -> None:
    """Image alignment, steps ``steps`` .. ``steps + image_alignment_steps``:
    each module's image encoder regresses, for a random view of a training
    shape, the code its point encoder gives that shape's clean points (the
    point encoders, and all else, stay fixed). The retrieval module is left
    alone by a deformation-only run (DF has no retrieval space of its own).

    The retrieval encoder is also fitted to rank every source as the point
    code does (``ranking_alignment_loss``), which weighs the code errors that
    move an image between neighbouring sources (docs/model.md). The
    learning rate falls over the stage's last ``lr_decay`` share, and the
    image encoders' BatchNorm uses batch statistics (which their running
    statistics then follow), as in the main steps; everything else is fixed.
    With ``config.image_teacher`` "source" the retrieval encoder's targets are the training shapes' own
    places as sources (``target_sources``, encoded once by the fixed source encoder) instead.
    """
    model.eval()
    if config.image_teacher not in ("points", "source"):
        raise ValueError(f"unknown image_teacher {config.image_teacher!r}")
    source_teacher = None
    if config.image_teacher == "source" and config.mode != "deformation":
        own = target_sources(Path(config.data), targets.names, config.model.source_points).to(sources.points.device)
        with torch.no_grad():
            source_teacher = torch.cat(
                [
                    model.retrieval.embed_sources(own.select(torch.arange(s, min(s + 256, len(own)))))[0]
                    for s in range(0, len(own), 256)
                ]
            )
    # log suffix -> (the module's target encoding ``(target, modality) -> code``,
    # its image encoder, the sources' codes to rank by or None: no ranking term)
    modules = {"d": (model.deformation.encode_target, model.deformation.images, None)}
    if config.mode != "deformation":
        with torch.no_grad():
            modules["r"] = (
                model.retrieval.embed_target,
                model.retrieval.images,
                model.retrieval.embed_sources(sources)[0],
            )
    parameters = [p for _, encoder, _ in modules.values() for p in encoder.parameters()]
    optimiser = torch.optim.Adam(parameters, lr=config.lr)
    device = parameters[0].device
    for _, encoder, _ in modules.values():
        encoder.train()
    end = config.steps + config.image_alignment_steps
    out = Path(config.out)
    # DDP would sync in its own forward; these encoders are called directly, so average by hand.
    quiet = contextlib.ExitStack()
    if distributed:
        quiet.enter_context(retrieval.no_sync())
        quiet.enter_context(deformation.no_sync())
    with quiet:
        for step in range(start, end):
            for group in optimiser.param_groups:
                group["lr"] = config.lr * learning_rate_factor(
                    step - config.steps, config.image_alignment_steps, config.lr_decay
                )
            rows = torch.randint(len(targets), (config.batch,), generator=generator)
            images, clean = target_batch(targets, rows, "images", config.model.n_points, 0.0, generator)
            images, clean = images.to(device), clean.to(device)
            losses = {}
            for name, (code, _, source_codes) in modules.items():
                with torch.no_grad():
                    teacher = code(clean, "points") if name != "r" or source_teacher is None else source_teacher[rows]
                student = code(images, "images")
                losses[f"align_{name}"] = cross_modal_loss(student, teacher)
                if source_codes is not None:
                    losses[f"rank_{name}"] = ranking_alignment_loss(
                        student, teacher, source_codes, config.alignment_sigma or config.sigma0
                    )
            optimiser.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            if distributed:
                world = dist.get_world_size()
                for parameter in parameters:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= world
            optimiser.step()
            record = {
                "step": step,
                "modality": "images",
                "phase": "alignment",
                **{k: float(v.detach()) for k, v in losses.items()},
            }
            logger.step(step, record)
            if main_process and ((step + 1) % config.save_every == 0 or step == end - 1):
                save_checkpoint(out / "last.pt", model, {"step": step, "best": math.inf, "config": config.to_json()})
    if main_process:  # after alignment the last model is the one to use
        shutil.copyfile(out / "last.pt", out / "best.pt")
    model.train()


def learning_rate_factor(step: int, steps: int, decay: float) -> float:
    """1 until the last ``decay`` share of ``steps``, then falling linearly to 0 at the last step."""
    start = steps * (1.0 - decay)
    return 1.0 if decay <= 0 or step < start else max(0.0, (steps - step) / (steps - start))
