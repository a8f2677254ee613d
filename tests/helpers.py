"""Hand-built test models, in Blender's Z-up world (metres)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import trimesh

from backend.geometry.frames import Z_UP_TO_Y_UP  # noqa: F401  (re-exported for the tests)
from backend.model.checkpoint import save_checkpoint
from backend.model.networks import JointModel, ModelConfig

# A small untrained model: fast enough for tests of everything but the model's quality.
TINY_MODEL = ModelConfig(
    point_width=16,
    image_width=8,
    global_code=16,
    part_code=4,
    target_code=16,
    embedding=8,
    n_points=256,
    source_points=128,
)


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save a ``TINY_MODEL`` with weights drawn from ``seed`` at ``path``."""
    torch.manual_seed(seed)
    save_checkpoint(path, JointModel(TINY_MODEL))
    return path


# glTF and OBJ are Y-up on disk: rotate Z-up geometry so it reads back Z-up.


def box(size, centre) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=size)
    mesh.apply_translation(centre)
    return mesh


def chair_parts(arms: bool = False, screws: int = 0, slats: int = 0) -> dict[str, trimesh.Trimesh]:
    """A chair: seat on four legs with a back; optional arms, screws, back slats."""
    parts = {"seat": box((0.5, 0.5, 0.05), (0, 0, 0.45))}
    for i, (x, y) in enumerate([(-0.2, -0.2), (0.2, -0.2), (-0.2, 0.2), (0.2, 0.2)]):
        parts[f"leg{i}"] = box((0.04, 0.04, 0.425), (x, y, 0.2125))
    if slats:
        width = 0.5 / slats
        for i in range(slats):
            x = -0.25 + width * (i + 0.5)
            parts[f"slat{i:02d}"] = box((width * 0.6, 0.04, 0.5), (x, 0.23, 0.725))
        parts["rail"] = box((0.5, 0.04, 0.04), (0, 0.23, 0.995))
    else:
        parts["back"] = box((0.5, 0.04, 0.5), (0, 0.23, 0.725))
    if arms:
        parts["arm_left"] = box((0.04, 0.4, 0.2), (-0.23, 0.0, 0.575))
    for i in range(screws):
        screw = trimesh.creation.cylinder(radius=0.004, height=0.02, sections=8)
        screw.apply_translation((-0.2 + 0.4 * i / max(screws - 1, 1), -0.2, 0.43))
        parts[f"screw{i:03d}"] = screw
    return parts


def write_scene(parts: dict[str, trimesh.Trimesh], path: Path) -> Path:
    """One node per part; converted to the file format's own up axis."""
    scene = trimesh.Scene()
    for name, mesh in parts.items():
        scene.add_geometry(mesh.copy(), node_name=name, geom_name=name)
    if path.suffix.lower() in (".glb", ".gltf", ".obj"):
        scene.apply_transform(Z_UP_TO_Y_UP)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene.export(str(path))
    return path


def write_single_mesh(parts: dict[str, trimesh.Trimesh], path: Path) -> Path:
    """All parts concatenated into one mesh (parts become connected components)."""
    mesh = trimesh.util.concatenate(list(parts.values()))
    if path.suffix.lower() in (".glb", ".gltf", ".obj"):
        mesh.apply_transform(Z_UP_TO_Y_UP)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(str(path))
    return path


def bench_module(name: str, script: str):
    """A script of bench/ (``script``, e.g. ``"ood.py"``) imported as module ``name``: the benches are scripts,
    not a package, and the tests measure with their code."""
    path = Path(__file__).resolve().parent.parent / "bench" / script
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
