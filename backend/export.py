"""Writing a fit as a .glb: one node per part whose transform IS the fitted box.

Each part's mesh is stored relative to its original box centre; the node
carries location = fitted centre and scale = fitted / original half-size, all
under a root node turned by the fit's yaw. Imported into Blender, every part
is an object whose location and scale are the fit, as the add-on builds it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import trimesh

from backend.geometry.frames import Z_UP_TO_Y_UP, carry_parts, fit_root, part_nodes
from backend.library.index import LibraryIndex, LibraryIndexError, load_library_model
from backend.library.scanning import PARTNET
from backend.library.source import Source

# Blender (Z up) -> glTF (Y up), as Blender's glTF exporter.


PART_CACHE_SIZE = 32  # sources whose part meshes and colours are kept in memory
_part_cache: OrderedDict[tuple, tuple[list[trimesh.Trimesh], list[np.ndarray | None]]] = OrderedDict()
_cache_lock = threading.Lock()


def _cached_parts(index: LibraryIndex, row: int):
    """``(meshes, colours)`` of source ``row``, parsed once per file version (bounded LRU).

    Keyed by the file's path, size and modification time and the source's arrays, so an
    edited file or a re-indexed source is read again. The meshes are shared: never modify them.
    """
    path = index.source_file(row)
    stat = path.stat()
    record = index.sources[row]
    if record.kind != PARTNET and (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
        raise LibraryIndexError(f"{path} changed since it was indexed; {index.repair_hint()}")
    key = (str(path), stat.st_size, stat.st_mtime_ns, str(index.folder.resolve()), index.sources[row].arrays)
    with _cache_lock:
        if key in _part_cache:
            _part_cache.move_to_end(key)
            return _part_cache[key]
    value = (_read_part_meshes(index, row), _read_part_colours(index, row))
    with _cache_lock:
        _part_cache[key] = value
        while len(_part_cache) > PART_CACHE_SIZE:
            _part_cache.popitem(last=False)
    return value


def part_meshes(index: LibraryIndex, row: int) -> list[trimesh.Trimesh]:
    """The original pieces of source ``row`` grouped into its parts, in the
    file's world frame (Z up, metres), one mesh per part (cached: do not modify)."""
    return _cached_parts(index, row)[0]


def part_colours(index: LibraryIndex, row: int) -> list[np.ndarray | None]:
    """RGBA base colour of each part of source ``row`` (that of its largest
    piece with a material), or None where the file has no colours."""
    return _cached_parts(index, row)[1]


def _read_part_meshes(index: LibraryIndex, row: int) -> list[trimesh.Trimesh]:
    record = index.sources[row]
    path = index.source_file(row)
    options = index.options
    model = load_library_model(path, record.kind, index.library_root, options)
    source: Source = index.load_source(row)
    vertices, faces, offset = [], [], 0
    for piece in model.pieces:
        vertices.append(piece.vertices)
        faces.append(piece.faces + offset)
        offset += len(piece.vertices)
    piece_face_part = np.concatenate([np.full(len(p.faces), part) for p, part in zip(model.pieces, source.piece_part)])
    all_vertices, all_faces = np.concatenate(vertices), np.concatenate(faces)
    meshes = []
    for part in range(source.n_parts):
        mesh = trimesh.Trimesh(all_vertices, all_faces[piece_face_part == part], process=False)
        mesh.remove_unreferenced_vertices()
        meshes.append(mesh)
    return meshes


def _read_part_colours(index: LibraryIndex, row: int) -> list[np.ndarray | None]:
    from backend.library.materials import node_colours

    source = index.load_source(row)
    colours = node_colours(index.source_file(row), index.library_root)
    best: list[tuple[float, np.ndarray | None]] = [(-1.0, None)] * source.n_parts
    for name, part in zip(source.piece_names, source.piece_part):
        node = name.split("#", 1)[0]
        colour = colours.get(node)
        if colour is None:
            continue
        faces = int(np.sum(source.face_part == part))
        if faces > best[part][0]:
            best[part] = (faces, colour)
    return [colour for _, colour in best]


def export_fit(index: LibraryIndex, candidate, path: str | Path) -> Path:
    """Write ``candidate`` (a ``backend.fitting.Candidate``) as a .glb."""
    path = Path(path)
    meshes = part_meshes(index, candidate.source_index)
    scene = trimesh.Scene()
    root = fit_root(candidate.pivot, candidate.yaw)
    scene.graph.update(frame_from=scene.graph.base_frame, frame_to="fit", matrix=Z_UP_TO_Y_UP @ root @ Z_UP_TO_Y_UP.T)
    nodes = part_nodes(candidate.source_boxes, candidate.fitted_boxes, candidate.pivot, candidate.yaw)
    colours = part_colours(index, candidate.source_index)
    for k, (mesh, source_box) in enumerate(zip(meshes, candidate.source_boxes)):
        local = mesh.copy()
        if colours[k] is not None:
            rgba = np.round(np.asarray(colours[k]) * 255).astype(np.uint8)
            local.visual = trimesh.visual.TextureVisuals(
                material=trimesh.visual.material.PBRMaterial(baseColorFactor=rgba)
            )
        local.apply_translation(-np.asarray(source_box[:3]))
        local.apply_transform(Z_UP_TO_Y_UP)
        scene.add_geometry(
            local,
            node_name=f"part_{k:02d}",
            geom_name=f"part_{k:02d}",
            parent_node_name="fit",
            transform=Z_UP_TO_Y_UP @ nodes[k] @ Z_UP_TO_Y_UP.T,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(scene.export(file_type="glb"))
    return path


def render_thumbnail(index: LibraryIndex, candidate, size: int = 96) -> np.ndarray:
    """(size, size, 3) uint8 picture of the deformed candidate (``backend.render.thumbnail``); the
    worker uses it only where the index has no stored thumbnail of that size (indexes made before them)."""
    from backend.render import DEFAULT_ALBEDO, thumbnail

    meshes = part_meshes(index, candidate.source_index)
    colours = part_colours(index, candidate.source_index)
    nodes = part_nodes(candidate.source_boxes, candidate.fitted_boxes, candidate.pivot, candidate.yaw)
    vertices, faces, face_colours, offset = [], [], [], 0
    for k, (mesh, colour) in enumerate(zip(meshes, colours)):
        points = np.asarray(mesh.vertices)
        vertices.append(carry_parts(points, np.full(len(points), k), candidate.source_boxes, nodes))
        faces.append(np.asarray(mesh.faces) + offset)
        face_colours.append(np.tile((colour[:3] if colour is not None else DEFAULT_ALBEDO), (len(mesh.faces), 1)))
        offset += len(mesh.vertices)
    return thumbnail(np.concatenate(vertices), np.concatenate(faces), np.concatenate(face_colours), size)
