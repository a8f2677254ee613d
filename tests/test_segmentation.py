import numpy as np
import pytest
from helpers import chair_parts, write_scene, write_single_mesh

from backend.library import IndexOptions, build_source, load_model


def source_of(path, **options):
    return build_source(load_model(path, path.parent), IndexOptions(**options), seed=0)


def part_of(source, piece_name):
    return int(source.piece_part[source.piece_names.index(piece_name)])


def test_each_node_is_a_part(tmp_path):
    source = source_of(write_scene(chair_parts(), tmp_path / "chair.glb"))
    assert source.piece_kind == "nodes"
    assert source.n_parts == 6
    assert sorted(source.piece_names) == sorted(chair_parts())
    assert source.n_joints == 5


def test_single_mesh_splits_into_components(tmp_path):
    source = source_of(write_single_mesh(chair_parts(), tmp_path / "chair.ply"))
    assert source.piece_kind == "components"
    # The back shares its bottom corners with the seat's top, so they are one component.
    assert len(source.piece_names) == 5
    assert source.n_parts == 5 and source.n_joints == 4


def test_screws_are_merged_into_the_parts_they_touch(tmp_path):
    source = source_of(write_scene(chair_parts(screws=60), tmp_path / "chair.glb"))
    assert len(source.piece_names) == 66
    assert source.n_parts == 6
    main = {part_of(source, n) for n in ["seat", "back", "leg0", "leg1", "leg2", "leg3"]}
    assert len(main) == 6  # no two real parts were merged together
    screws = {part_of(source, n) for n in source.piece_names if n.startswith("screw")}
    assert screws <= main


def test_part_count_is_capped_by_merging_neighbours(tmp_path):
    parts = chair_parts(slats=30)
    path = write_scene(parts, tmp_path / "slatted.glb")
    source = source_of(path, max_parts=8, min_part_fraction=0.0)
    assert source.n_parts == 8
    # Slats merge with slats (cheap union boxes) before any leg joins the seat.
    legs = {part_of(source, f"leg{i}") for i in range(4)}
    assert len(legs) == 4 and part_of(source, "seat") not in legs
    # Every part is still connected to the rest.
    touched = set(source.joint_pairs.reshape(-1).tolist())
    assert touched == set(range(source.n_parts))


def test_display_mapping_covers_every_face(tmp_path):
    source = source_of(write_scene(chair_parts(screws=5), tmp_path / "chair.glb"))
    assert len(source.face_part) == sum(len(m.faces) for m in chair_parts(screws=5).values())
    assert set(np.unique(source.face_part)) == set(range(source.n_parts))


@pytest.mark.parametrize("max_parts", [1, 3])
def test_any_cap_is_respected(tmp_path, max_parts):
    source = source_of(write_scene(chair_parts(arms=True, screws=10), tmp_path / "c.glb"), max_parts=max_parts)
    assert source.n_parts == max_parts


def test_floating_specks_join_real_parts_not_each_other(tmp_path):
    """A single mesh with hundreds of loose tiny components (bolts, debris)."""
    import trimesh

    parts = chair_parts()
    rng = np.random.default_rng(0)
    for i in range(400):
        speck = trimesh.creation.box(extents=(0.005, 0.005, 0.005))
        speck.apply_translation(rng.uniform([-0.25, -0.25, 0.0], [0.25, 0.25, 0.9]))
        parts[f"speck{i}"] = speck
    source = source_of(write_single_mesh(parts, tmp_path / "specks.ply"))
    assert len(source.piece_names) == 405
    assert source.n_parts == 5 and source.n_joints == 4  # the chair's own structure survives
