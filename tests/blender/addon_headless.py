"""Drive the installed add-on with the bpy wheel, headless (run by tests/test_addon.py).

Usage: python addon_headless.py ZIP LIBRARY CHECKPOINT POINTS.npy IMAGE.png OUT.json
Every step asserts; the facts it checked are written to OUT.json.
"""

import json
import sys

import numpy as np

zip_path, library, checkpoint, points_path, image_path, out_path = sys.argv[1:7]

import bpy  # noqa: E402

facts = {}
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
package = "bl_ext.user_default.rfit"
assert package in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
prefs = bpy.context.preferences.addons[package].preferences
prefs.checkpoint = checkpoint
module = sys.modules[package]
facts["bundled_backend"] = module.__file__

# -- bad input first: nothing changes, a clear report --------------------------------------
objects_before = len(bpy.data.objects)
try:
    bpy.ops.rfit.retrieve_and_fit()
except RuntimeError as error:
    facts["no_index_error"] = str(error)
assert "no library index" in facts["no_index_error"] or "index a library" in facts["no_index_error"], facts
assert len(bpy.data.objects) == objects_before

# -- index the library ----------------------------------------------------------------------
result = bpy.ops.rfit.index_library(directory=library)
assert result == {"FINISHED"}, result
settings = bpy.context.scene.rfit
facts["index_directory"] = settings.index_directory

try:
    bpy.ops.rfit.retrieve_and_fit()  # nothing selected
except RuntimeError as error:
    facts["no_selection_error"] = str(error)
assert "select" in facts["no_selection_error"].lower(), facts

empty_mesh = bpy.data.meshes.new("empty")
empty_obj = bpy.data.objects.new("empty", empty_mesh)
bpy.context.scene.collection.objects.link(empty_obj)
bpy.context.view_layer.objects.active = empty_obj
try:
    bpy.ops.rfit.retrieve_and_fit()
except RuntimeError as error:
    facts["empty_mesh_error"] = str(error)
assert "no vertices" in facts["empty_mesh_error"], facts
bpy.data.objects.remove(empty_obj)

# -- a scan as a mesh of loose vertices, moved away from the origin -------------------------
points = np.load(points_path).astype(np.float64)
mesh = bpy.data.meshes.new("scan")
mesh.from_pydata(points.tolist(), [], [])
scan = bpy.data.objects.new("scan", mesh)
scan.location = (2.0, 1.0, 0.0)
bpy.context.scene.collection.objects.link(scan)
bpy.context.view_layer.objects.active = scan
scan.select_set(True)
bpy.ops.ed.undo_push(message="before fit")
count_before = len(bpy.data.objects)

result = bpy.ops.rfit.retrieve_and_fit(top_k=3, refine=False)
assert result == {"FINISHED"}, result
parent = bpy.context.view_layer.objects.active
assert parent.get("rfit_result"), parent.name
parts = sorted((c for c in parent.children), key=lambda o: o["rfit_part"])
facts["parts"] = len(parts)
assert len(parts) >= 2
assert len(settings.candidates) == 3
thumb = bpy.data.images.get(settings.candidates[0].thumbnail)
assert thumb is not None and tuple(thumb.size) == (96, 96), settings.candidates[0].thumbnail
assert all(len(o.data.materials) == 1 for o in parts), "the source's colours are kept"
assert bpy.ops.rfit.check_backend() == {"FINISHED"}
facts["backend"] = dict(sys.modules[package + ".api"].backend_info)
for obj in parts:
    fitted = np.array(obj["rfit_fitted_box"])
    source = np.array(obj["rfit_source_box"])
    world_centre = np.array(obj.matrix_world.translation)
    assert np.allclose(world_centre, fitted[:3], atol=1e-4), (world_centre, fitted)
    ratio = np.where(source[3:] > 1e-9, fitted[3:] / np.maximum(source[3:], 1e-9), 1.0)
    assert np.allclose(np.array(obj.scale), ratio, atol=1e-4)
    # the part's mesh spans its fitted box: location and scale ARE the box
    corners = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    assert np.allclose((lo + hi) / 2, fitted[:3], atol=1e-3) and np.allclose((hi - lo) / 2, fitted[3:], atol=1e-3)
centre = np.array([np.array(o["rfit_fitted_box"])[:3] for o in parts]).mean(axis=0)
facts["fit_centre"] = centre.tolist()
assert np.linalg.norm(centre[:2] - (points.mean(axis=0)[:2] + [2.0, 1.0])) < 0.5  # placed on the scan

# -- swap to another candidate ----------------------------------------------------------------
first_source = parent["rfit_source"]
result = bpy.ops.rfit.use_candidate(rank=1)
assert result == {"FINISHED"}
swapped = bpy.context.view_layer.objects.active
facts["swapped"] = [first_source, swapped["rfit_source"]]
assert swapped["rfit_rank"] == 1 and swapped["rfit_source"] == json.loads(swapped["rfit_candidates"])[1]["source"]
assert sum(1 for o in bpy.data.objects if o.get("rfit_result")) == 1  # the old fit was replaced

# -- scale one part by hand, then keep connected ------------------------------------------------
parts = sorted(swapped.children, key=lambda o: o["rfit_part"])
parts[0].scale = (parts[0].scale[0], parts[0].scale[1], parts[0].scale[2] * 1.3)
bpy.context.view_layer.update()
held_scale = tuple(parts[0].scale)
result = bpy.ops.rfit.enforce_connectivity(keep_symmetry=False)
assert result == {"FINISHED"}
assert np.allclose(tuple(parts[0].scale), held_scale)  # the edited part did not move


def joint_gaps(parent):
    """Gaps (metres) of the source's joints as the part objects place them, from the index files."""
    index = settings.index_directory
    manifest = json.load(open(index + "/manifest.json"))
    record = manifest["sources"][parent["rfit_source_index"]]
    with np.load(index + "/" + record["arrays"], allow_pickle=False) as data:
        boxes, pairs, joints = data["boxes"], data["joint_pairs"], data["joint_points"]
        floor = float(data["min_half_size"])
    objs = sorted(parent.children, key=lambda o: o["rfit_part"])
    now = np.array(
        [list(o.matrix_world.translation) + [a * b for a, b in zip(o["rfit_source_box"][3:], o.scale)] for o in objs]
    )
    ends = [
        now[pairs[:, s], :3]
        + (joints - boxes[pairs[:, s], :3]) / np.maximum(boxes[pairs[:, s], 3:], floor) * now[pairs[:, s], 3:]
        for s in (0, 1)
    ]
    return np.linalg.norm(ends[0] - ends[1], axis=1)


facts["joint_gaps_after_keep_connected"] = float(joint_gaps(swapped).max(initial=0.0))
assert facts["joint_gaps_after_keep_connected"] < 1e-4, facts

# -- live mode: moving a part re-attaches the others through the depsgraph handler ------------
settings.keep_symmetry = False
settings.live = True
boxes_before = [tuple(o.location) for o in parts]
parts[1].location.z += 0.05
bpy.context.view_layer.update()
facts["live_moved_others"] = any(tuple(o.location) != b for o, b in zip(parts[2:], boxes_before[2:]))
settings.live = False
assert facts["live_moved_others"] or len(parts) <= 2, facts

# -- refit keeping the edit, reset, apply -----------------------------------------------------
parts[0].scale = (parts[0].scale[0] * 1.1, parts[0].scale[1], parts[0].scale[2])
held = tuple(parts[0].scale)
assert bpy.ops.rfit.refit(keep_edited=True) == {"FINISHED"}
assert np.allclose(tuple(parts[0].scale), held, atol=1e-4), (tuple(parts[0].scale), held)
for obj in bpy.context.selected_objects:
    obj.select_set(False)
parts[0].select_set(True)
bpy.context.view_layer.objects.active = parts[0]
assert bpy.ops.rfit.reset_parts() == {"FINISHED"}
fitted = np.array(parts[0]["rfit_fitted_box"])
assert np.allclose(np.array(parts[0].matrix_world.translation), fitted[:3], atol=1e-4)
assert bpy.ops.rfit.apply_fit() == {"FINISHED"}
assert all(tuple(o.scale) == (1.0, 1.0, 1.0) and not any(k.startswith("rfit_") for k in o.keys()) for o in parts)
corners = np.array([parts[0].matrix_world @ v.co for v in parts[0].data.vertices])
facts["apply_kept_shape"] = bool(np.allclose((corners.max(0) - corners.min(0)) / 2, fitted[3:], atol=1e-3))
assert facts["apply_kept_shape"]

# -- an image target ------------------------------------------------------------------------
result = bpy.ops.rfit.retrieve_and_fit(image_path=image_path, top_k=2)
assert result == {"FINISHED"}
facts["image_fit"] = bpy.context.view_layer.objects.active["rfit_source"]
try:
    bpy.ops.rfit.retrieve_and_fit(image_path=library + "/missing.png")
except RuntimeError as error:
    facts["bad_image_error"] = str(error)
assert "cannot read" in facts["bad_image_error"], facts

# -- undo removes a fit in one step ---------------------------------------------------------
count = len(bpy.data.objects)
try:
    bpy.ops.ed.undo()
    facts["undo"] = len(bpy.data.objects) < count
except RuntimeError as error:  # no undo stack without a window in some builds
    facts["undo"] = f"unavailable: {error}"

# -- disable cleanly: the worker stops ------------------------------------------------------------
client = sys.modules[package + ".api"]._client
bpy.ops.preferences.addon_disable(module=package)
facts["worker_stopped"] = client is None or not client.alive
assert facts["worker_stopped"]
assert not hasattr(bpy.types.Scene, "rfit")
with open(out_path, "w") as handle:
    json.dump(facts, handle, indent=1)
print("ok")
