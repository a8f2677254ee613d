import json

import numpy as np
import pytest
import trimesh
from helpers import Z_UP_TO_Y_UP, chair_parts

from backend.library import IndexOptions, UnreadableModel, build_source
from backend.library.partnet import is_partnet_folder, leaf_parts, load_partnet


def write_partnet(folder, parts):
    """A PartNet-style shape: chair -> {seat, base -> legs, back}; one OBJ per mesh, Y-up."""
    (folder / "objs").mkdir(parents=True)
    for name, mesh in parts.items():
        mesh = mesh.copy()
        mesh.apply_transform(Z_UP_TO_Y_UP)
        mesh.export(str(folder / "objs" / f"new-{name}.obj"))
    legs = [n for n in parts if n.startswith("leg")]
    hierarchy = [
        {
            "text": "Chair",
            "id": 0,
            "children": [
                {"text": "Chair Seat", "id": 1, "objs": ["new-seat"]},
                {"text": "Chair Back", "id": 2, "objs": ["new-back"]},
                {
                    "text": "Chair Base",
                    "id": 3,
                    "children": [{"text": "Leg", "id": 4 + i, "objs": [f"new-{n}"]} for i, n in enumerate(legs)],
                },
            ],
        }
    ]
    (folder / "result.json").write_text(json.dumps(hierarchy))
    return folder


def test_leaves_become_pieces(tmp_path):
    folder = write_partnet(tmp_path / "shape", chair_parts())
    assert is_partnet_folder(folder)
    model = load_partnet(folder, tmp_path)
    assert model.piece_kind == "partnet"
    assert [p.name for p in model.pieces] == ["Chair Seat_1", "Chair Back_2", "Leg_4", "Leg_5", "Leg_6", "Leg_7"]
    v = np.concatenate([p.vertices for p in model.pieces])
    np.testing.assert_allclose([v.min(axis=0), v.max(axis=0)], [[-0.25, -0.25, 0], [0.25, 0.25, 0.975]], atol=1e-5)
    source = build_source(model, IndexOptions(), seed=0)
    assert source.n_parts == 6 and source.n_joints == 5


def test_obj_name_cannot_escape(tmp_path):
    folder = write_partnet(tmp_path / "shape", chair_parts())
    trimesh.creation.box().export(str(tmp_path / "outside.obj"))
    (folder / "result.json").write_text(json.dumps([{"text": "x", "id": 0, "objs": ["../../outside"]}]))
    with pytest.raises(UnreadableModel, match="outside objs"):
        load_partnet(folder, tmp_path)


def test_malformed_hierarchy(tmp_path):
    folder = write_partnet(tmp_path / "shape", chair_parts())
    (folder / "result.json").write_text("{not json")
    with pytest.raises(UnreadableModel, match="result.json"):
        load_partnet(folder, tmp_path)
    assert leaf_parts({"text": "a", "id": 0, "objs": ["o"]}) == [("a_0", ["o"])]
