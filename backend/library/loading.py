"""Reading mesh files into pieces, in Blender's world frame (Z up, metres).

A *piece* is the finest unit a file offers: a scene node (glTF node, OBJ
object or group) or, for a file holding a single mesh, one connected
component of it. Pieces are later grouped into deformable parts.

Axis conventions follow what a Blender user sees when importing the same
file with Blender's own importers at their defaults:

- glTF/GLB is Y-up by specification: ``(x, y, z) -> (x, -z, y)``, i.e.
  +Y up becomes +Z up and +Z forward becomes -Y, as Blender's glTF importer.
- OBJ is read as Blender's OBJ importer does by default (forward -Z, up Y):
  the same conversion.
- PLY, STL and OFF are taken as Z-up (Blender's PLY/STL defaults).

A per-library ``up_axis`` of ``"Y"`` or ``"Z"`` overrides the per-format
default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")
UP_AXES = ("auto", "Y", "Z")
Y_UP_FORMATS = (".obj", ".glb", ".gltf")

# (x, y, z) in a Y-up file -> (x, -z, y) in Blender's Z-up world.
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class UnreadableModel(ValueError):
    """A library file that cannot become a source; the message says why."""


@dataclass
class Piece:
    """One node or connected component of a file.

    Attributes:
        name: node name, or ``"<node>#<component>"`` for components.
        vertices: (V, 3) float64, world frame (Z up, metres).
        faces: (F, 3) int64 indices into ``vertices``.
        node: index of the file node the piece came from (in ``LoadedModel.nodes``).
        node_faces: (F,) index of each face inside that node's face list, so a
            display mesh can be rebuilt from the file without re-segmenting.
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    node: int
    node_faces: np.ndarray


@dataclass
class LoadedModel:
    """What a file holds, ready for segmentation.

    Attributes:
        nodes: names of the file's mesh nodes, in a deterministic order.
        node_face_counts: (n_nodes,) faces per node.
        pieces: the pieces, from nodes (several nodes) or components (one node).
        piece_kind: ``"nodes"``, ``"components"`` or ``"partnet"``.
    """

    nodes: list[str]
    node_face_counts: np.ndarray
    pieces: list[Piece]
    piece_kind: str


class ConfinedResolver(trimesh.resolvers.FilePathResolver):
    """Resolves a file's external assets (glTF buffers, OBJ materials) only
    inside the library root, whatever ``..`` or symlinks the file names."""

    def __init__(self, source: str | os.PathLike, root: str | os.PathLike):
        super().__init__(str(source))
        self.root = Path(root).resolve()

    def absolute(self, name: str) -> Path:
        path = (Path(self.parent) / name.strip()).resolve()
        if not path.is_relative_to(self.root):
            raise UnreadableModel(f"asset '{name}' lies outside the library folder")
        return path

    def get(self, name: str) -> bytes:
        path = self.absolute(name)
        if not path.exists():
            raise UnreadableModel(f"asset '{name}' is missing")
        if not path.is_file():  # a FIFO or device would block the reader forever
            raise UnreadableModel(f"asset '{name}' is not a regular file")
        return path.read_bytes()

    def namespaced(self, namespace: str) -> ConfinedResolver:
        return ConfinedResolver(os.path.join(self.parent, namespace, "_"), self.root)


def up_axis_matrix(extension: str, up_axis: str = "auto") -> np.ndarray:
    """(3, 3) rotation from a file's frame to Blender's Z-up world."""
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {UP_AXES}, got {up_axis!r}")
    y_up = extension.lower() in Y_UP_FORMATS if up_axis == "auto" else up_axis == "Y"
    return Y_UP_TO_Z_UP if y_up else np.eye(3)


def read_scene_nodes(path: Path, root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Mesh nodes of a file as ``(name, vertices, faces)`` in the file's frame,
    with node transforms applied, sorted by name for determinism."""
    extension = path.suffix.lower()
    kwargs: dict = {"resolver": ConfinedResolver(path, root)}
    if extension == ".obj":
        kwargs.update(split_objects=True, split_groups=True, group_material=False, skip_materials=True)
    try:
        scene = trimesh.load_scene(str(path), file_type=extension[1:], process=False, **kwargs)
    except UnreadableModel:
        raise
    except IndexError as error:
        raise UnreadableModel(f"{extension[1:].upper()} file has a face naming a vertex it does not have") from error
    except Exception as error:  # trimesh raises many types on malformed input
        raise UnreadableModel(f"cannot parse {extension[1:].upper()} file: {error}") from error
    nodes = []
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        mesh = scene.geometry.get(geometry_name)
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            continue
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        vertices = vertices @ transform[:3, :3].T + transform[:3, 3]
        nodes.append((str(node), vertices, np.asarray(mesh.faces, dtype=np.int64)))
    nodes.sort(key=lambda item: item[0])
    return nodes


def weld_vertices(vertices: np.ndarray, faces: np.ndarray, tolerance: float) -> np.ndarray:
    """(F, 3) faces re-indexed so coincident vertices share one index.

    Exporters split vertices along hard edges and UV seams; without welding,
    every face of a box would look like its own component.
    """
    if len(vertices) == 0:
        return faces
    keys = np.round(vertices / max(tolerance, 1e-12)).astype(np.int64)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    return inverse.reshape(-1)[faces]


def connected_face_components(vertices: np.ndarray, faces: np.ndarray, tolerance: float) -> np.ndarray:
    """(F,) component label of every face; faces sharing a (welded) vertex
    belong to the same component. Labels are ordered by first face."""
    welded = weld_vertices(vertices, faces, tolerance)
    n_faces = len(faces)
    n_vertices = int(welded.max()) + 1 if n_faces else 0
    rows = np.repeat(np.arange(n_faces), 3)
    incidence = coo_matrix((np.ones(3 * n_faces), (rows, welded.reshape(-1))), shape=(n_faces, n_vertices)).tocsr()
    adjacency = incidence @ incidence.T
    _, labels = connected_components(adjacency, directed=False)
    # Renumber so component 0 holds face 0, and so on: stable across runs.
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels]


def check_geometry(vertices: np.ndarray, faces: np.ndarray, what: str) -> None:
    """Raise ``UnreadableModel`` for NaN/inf vertices or bad face indices."""
    if not np.all(np.isfinite(vertices)):
        raise UnreadableModel(f"{what} has non-finite (NaN or infinite) vertex coordinates")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise UnreadableModel(f"{what} has face indices outside its vertex list")


def pieces_from_nodes(
    nodes: list[tuple[str, np.ndarray, np.ndarray]], rotation: np.ndarray, split_components: bool
) -> LoadedModel:
    """Turn file nodes into pieces: one per node, or one per connected
    component when the file has a single node and ``split_components``."""
    if not nodes:
        raise UnreadableModel("no triangle mesh in file")
    world = []
    for name, vertices, faces in nodes:
        check_geometry(vertices, faces, f"node '{name}'")
        world.append((name, vertices @ rotation.T, faces))
    names = [name for name, _, _ in world]
    counts = np.array([len(faces) for _, _, faces in world], dtype=np.int64)
    if len(world) > 1 or not split_components:
        pieces = [Piece(name, v, f, i, np.arange(len(f))) for i, (name, v, f) in enumerate(world)]
        return LoadedModel(names, counts, pieces, "nodes")
    name, vertices, faces = world[0]
    extent = float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0))) if len(vertices) else 0.0
    labels = connected_face_components(vertices, faces, tolerance=1e-7 * max(extent, 1e-9))
    pieces = []
    for component in range(int(labels.max()) + 1 if len(labels) else 0):
        face_ids = np.flatnonzero(labels == component)
        used, local = np.unique(faces[face_ids], return_inverse=True)
        pieces.append(Piece(f"{name}#{component}", vertices[used], local.reshape(-1, 3), 0, face_ids))
    return LoadedModel(names, counts, pieces, "components")


def load_model(
    path: str | os.PathLike, root: str | os.PathLike, up_axis: str = "auto", max_faces: int = 2_000_000
) -> LoadedModel:
    """Read one mesh file of the library into pieces in the Z-up world frame.

    Args:
        path: the file, inside ``root``.
        root: the library folder that confines every asset the file names.
        up_axis: ``"auto"`` (per-format default), ``"Y"`` or ``"Z"``.
        max_faces: refuse larger files rather than exhaust memory.

    Raises:
        UnreadableModel: with a reason a user can act on.
    """
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in MESH_EXTENSIONS:
        raise UnreadableModel(f"unsupported file type '{extension}'")
    nodes = read_scene_nodes(path, Path(root))
    total = sum(len(faces) for _, _, faces in nodes)
    if total > max_faces:
        raise UnreadableModel(f"{total} faces exceeds the limit of {max_faces}")
    return pieces_from_nodes(nodes, up_axis_matrix(extension, up_axis), split_components=True)
