"""PartNet's on-disk format: ``result.json`` (part hierarchy) beside ``objs/``.

Each leaf of the hierarchy is a piece made of the OBJ files it lists, as in
the paper, which uses PartNet's finest (leaf) parts. PartNet's OBJs share
ShapeNet's Y-up frame and are converted like any OBJ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backend.library.loading import (
    LoadedModel,
    UnreadableModel,
    pieces_from_nodes,
    read_scene_nodes,
    up_axis_matrix,
)

RESULT_FILE = "result.json"
OBJ_FOLDER = "objs"


def is_partnet_folder(folder: Path) -> bool:
    """True when ``folder`` holds a PartNet shape."""
    return (folder / RESULT_FILE).is_file() and (folder / OBJ_FOLDER).is_dir()


def leaf_parts(hierarchy: list | dict) -> list[tuple[str, list[str]]]:
    """``(name, obj names)`` of every leaf of a PartNet hierarchy, depth first."""
    leaves: list[tuple[str, list[str]]] = []
    stack = list(reversed(hierarchy if isinstance(hierarchy, list) else [hierarchy]))
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            raise UnreadableModel("result.json: hierarchy entries must be objects")
        children = node.get("children") or []
        if children:
            stack.extend(reversed(children))
        else:
            objs = [str(o) for o in node.get("objs", [])]
            name = f"{node.get('text', node.get('name', 'part'))}_{node.get('id', len(leaves))}"
            if objs:
                leaves.append((name, objs))
    return leaves


def load_partnet(folder: Path, root: Path, up_axis: str = "auto", max_faces: int = 2_000_000) -> LoadedModel:
    """Read a PartNet shape folder into one piece per leaf part.

    Raises:
        UnreadableModel: malformed ``result.json``, a missing OBJ, or an OBJ
            name that would leave the shape's ``objs/`` folder.
    """
    try:
        hierarchy = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UnreadableModel(f"cannot read {RESULT_FILE}: {error}") from error
    objs_dir = (folder / OBJ_FOLDER).resolve()
    nodes = []
    total = 0
    for name, objs in leaf_parts(hierarchy):
        vertices, faces, offset = [], [], 0
        for obj in objs:
            path = (objs_dir / f"{obj}.obj").resolve()
            if not path.is_relative_to(objs_dir):
                raise UnreadableModel(f"result.json names '{obj}', outside {OBJ_FOLDER}/")
            if not path.is_file():
                raise UnreadableModel(f"missing {OBJ_FOLDER}/{obj}.obj")
            for _, v, f in read_scene_nodes(path, root):
                vertices.append(v)
                faces.append(f + offset)
                offset += len(v)
        if faces:
            nodes.append((name, np.concatenate(vertices), np.concatenate(faces)))
            total += len(nodes[-1][2])
    if total > max_faces:
        raise UnreadableModel(f"{total} faces exceeds the limit of {max_faces}")
    model = pieces_from_nodes(nodes, up_axis_matrix(".obj", up_axis), split_components=False)
    model.piece_kind = "partnet"
    return model
