"""Checkpoints: a state dict and the model config as JSON, loaded with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from backend.model.networks import JointModel, ModelConfig

FORMAT = "rfit-checkpoint-1"

# Model options added after checkpoints were first written, with the value
# that reproduces an older checkpoint that does not name them.
_LEGACY_OPTIONS = {
    "embedding_radius": 0.0,
    "sigma_init": 0.02,
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "shared_point_encoder": False,
}


def save_checkpoint(
    path: str | os.PathLike, model: JointModel, extra: dict | None = None, state: dict | None = None
) -> None:
    """Write atomically: model weights, config, JSON metadata and optional
    training state (optimiser tensors) for resuming."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_json()),
        "extra": json.dumps(extra or {}),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if state is not None:
        payload["state"] = state
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[JointModel, dict, dict | None]:
    """(model in eval mode, metadata, training state or None). Never unpickles objects."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an rfit checkpoint")
    model = JointModel(ModelConfig(**{**_LEGACY_OPTIONS, **json.loads(payload["config"])}))
    model.load_state_dict(payload["model"])  # copies into float32 parameters, also from float16
    model.to(device).eval()
    return model, json.loads(payload["extra"]), payload.get("state")


def checkpoint_id(path: str | os.PathLike) -> str:
    """Content hash of a checkpoint file: an index's cached codes name the model that made them."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def export_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A shippable copy: no optimiser state, floating-point weights in float16
    (half the size; ``load_checkpoint`` restores float32)."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{source} is not an rfit checkpoint")
    payload.pop("state", None)
    payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    tmp = Path(target).with_name(f".{Path(target).name}.tmp")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, tmp)
    os.replace(tmp, target)
