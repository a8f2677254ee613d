"""File formats, axis conventions and confinement of the loader."""

import json

import numpy as np
import pytest
import trimesh
from helpers import Z_UP_TO_Y_UP, chair_parts, write_scene

from backend.library import UnreadableModel, load_model


def bounds(model):
    v = np.concatenate([p.vertices for p in model.pieces])
    return np.stack([v.min(axis=0), v.max(axis=0)])


@pytest.mark.parametrize("name", ["chair.glb", "chair.gltf", "chair.obj", "chair.ply", "chair.stl", "chair.off"])
def test_every_format_reads_back_z_up(tmp_path, name):
    parts = chair_parts()
    path = tmp_path / name
    if path.suffix in (".glb", ".gltf", ".obj"):
        write_scene(parts, path)
    else:  # single-mesh formats, Z-up on disk
        trimesh.util.concatenate(list(parts.values())).export(str(path))
    model = load_model(path, tmp_path)
    np.testing.assert_allclose(bounds(model), [[-0.25, -0.25, 0.0], [0.25, 0.25, 0.975]], atol=1e-5)
    expected_kind = "nodes" if path.suffix in (".glb", ".gltf", ".obj") else "components"
    assert model.piece_kind == expected_kind


def test_gltf_front_becomes_minus_y(tmp_path):
    """A marker at glTF +Z (its front) lands at Blender -Y, as Blender's importer does."""
    marker = trimesh.creation.box(extents=(0.1, 0.1, 0.1))
    marker.apply_translation((0, 0, 1.0))  # glTF frame: +Z forward
    scene = trimesh.Scene()
    scene.add_geometry(marker, node_name="front")
    scene.export(str(tmp_path / "m.glb"))
    centre = bounds(load_model(tmp_path / "m.glb", tmp_path)).mean(axis=0)
    np.testing.assert_allclose(centre, [0, -1.0, 0], atol=1e-6)


def test_up_axis_override(tmp_path):
    mesh = trimesh.creation.box(extents=(1, 2, 3))
    mesh.apply_translation((0, 0, 1.5))
    mesh.export(str(tmp_path / "z.obj"))  # a Z-up OBJ, against the OBJ default
    as_default = bounds(load_model(tmp_path / "z.obj", tmp_path))
    as_z = bounds(load_model(tmp_path / "z.obj", tmp_path, up_axis="Z"))
    np.testing.assert_allclose(as_z, [[-0.5, -1, 0], [0.5, 1, 3]], atol=1e-6)
    np.testing.assert_allclose(as_default, [[-0.5, -3, -1], [0.5, 0, 1]], atol=1e-6)
    with pytest.raises(ValueError, match="up_axis"):
        load_model(tmp_path / "z.obj", tmp_path, up_axis="X")


def test_node_transforms_are_applied(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(
        trimesh.creation.box(extents=(1, 1, 1)),
        node_name="moved",
        transform=trimesh.transformations.translation_matrix((5, 0, 0)),
    )
    scene.add_geometry(trimesh.creation.box(extents=(1, 1, 1)), node_name="origin")
    scene.apply_transform(Z_UP_TO_Y_UP)
    scene.export(str(tmp_path / "t.glb"))
    model = load_model(tmp_path / "t.glb", tmp_path)
    centres = {p.name: p.vertices.mean(axis=0) for p in model.pieces}
    np.testing.assert_allclose(centres["moved"], [5, 0, 0], atol=1e-6)


def test_gltf_buffer_outside_library_is_refused(tmp_path):
    library = tmp_path / "library"
    library.mkdir()
    files = trimesh.Scene([trimesh.creation.box()]).export(file_type="gltf")
    gltf = json.loads(files["model.gltf"])
    for name, data in files.items():
        if name.endswith(".bin"):
            (library / name).write_bytes(data)
    (tmp_path / "secret.bin").write_bytes(files[gltf["buffers"][0]["uri"]])
    (library / "fine.gltf").write_text(json.dumps(gltf))
    assert load_model(library / "fine.gltf", library).pieces  # the same file, confined, loads
    gltf["buffers"][0]["uri"] = "../secret.bin"
    (library / "evil.gltf").write_text(json.dumps(gltf))
    with pytest.raises(UnreadableModel, match="outside the library"):
        load_model(library / "evil.gltf", library)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "no triangle mesh"),
        (b"v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite"),
        (b"v 0 0 0\nv 1 0 0\n", "no triangle mesh"),
    ],
)
def test_bad_obj_gives_a_reason(tmp_path, content, reason):
    (tmp_path / "bad.obj").write_bytes(content)
    with pytest.raises(UnreadableModel, match=reason):
        load_model(tmp_path / "bad.obj", tmp_path)


def test_face_limit(tmp_path):
    write_scene(chair_parts(), tmp_path / "c.glb")
    with pytest.raises(UnreadableModel, match="exceeds the limit"):
        load_model(tmp_path / "c.glb", tmp_path, max_faces=10)
