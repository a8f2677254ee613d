"""Drive the installed add-on with the bpy wheel, headless (run by tests/test_addon.py).

Usage: python addon_headless.py ZIP LIBRARY CHECKPOINT POINTS.npy IMAGE.png OUT.json
Every step asserts; the facts it checked are written to OUT.json.
"""

import json
import os
import sys

import numpy as np

zip_path, library, checkpoint, points_path, image_path, out_path = sys.argv[1:7]

import bpy  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from joints import joint_gaps as shared_joint_gaps  # noqa: E402

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

# -- one code path: execute() reads the panel's explicit target choice, as the UI does ---------
api = sys.modules[package + ".api"]
build_module = sys.modules[package + ".build"]
first_thumbnails = [c.thumbnail for c in settings.candidates]
bpy.context.scene.cursor.location = (3.0, -2.0, 0.5)
settings.image_path = image_path  # picking a file selects "Image file"
assert settings.target == "IMAGE", settings.target
result = bpy.ops.rfit.retrieve_and_fit(top_k=2)
assert result == {"FINISHED"}
image_fit = bpy.context.view_layer.objects.active
facts["panel_image_fit_target"] = json.loads(image_fit["rfit_info"])["target"]
assert facts["panel_image_fit_target"] == {"image": image_path}, facts  # not the selected scan
# an image says nothing about where the object stands: upright, resting on the 3D cursor
boxes = np.array([o["rfit_fitted_box"] for o in image_fit.children])
world = np.array([list(o.matrix_world.translation) for o in image_fit.children])
assert np.allclose(world, boxes[:, :3], atol=1e-4)
facts["image_fit_base"] = [*((boxes[:, :2].min(0) + boxes[:, :2].max(0)) / 2), (boxes[:, 2] - boxes[:, 5]).min()]
assert np.allclose(facts["image_fit_base"], (3.0, -2.0, 0.5), atol=0.15), facts["image_fit_base"]
assert np.allclose(tuple(image_fit.rotation_euler), (0, 0, 0), atol=1e-6)
# thumbnails are new datablocks per fit: no panel keeps showing the last fit's pictures
facts["thumbnails"] = [first_thumbnails, [c.thumbnail for c in settings.candidates]]
assert not set(facts["thumbnails"][0]) & set(facts["thumbnails"][1]), facts["thumbnails"]

# -- "match the view": turned about its vertical so the viewport sees it from the image's side ---------
import mathutils  # noqa: E402

facts["image_view"] = json.loads(image_fit["rfit_info"]).get("view")
before = [tuple(o.matrix_world.translation) for o in image_fit.children]
if facts["image_view"] is None:  # the backend estimated no camera: a clear message, nothing moves
    try:
        bpy.ops.rfit.match_view()
    except RuntimeError as error:
        facts["no_view_error"] = str(error)
    assert "no camera view" in facts["no_view_error"], facts
    assert np.allclose([tuple(o.matrix_world.translation) for o in image_fit.children], before)
    info = json.loads(image_fit["rfit_info"])  # the contract's view, as the image fit fills it (helper I)
    az, el = np.radians(-50.0), np.radians(25.0)
    info["view"] = {
        "direction": [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)],
        "azimuth_deg": -50.0,
        "elevation_deg": 25.0,
        "fov_deg": 40.0,
        "estimated": True,
    }
    image_fit["rfit_info"] = json.dumps(info)
seen = np.array(json.loads(image_fit["rfit_info"])["view"]["direction"])


def look_from(direction, location):
    """Point the headless screen's 3D viewport at ``location`` from ``direction`` (towards the eye)."""
    back = np.asarray(direction, float) / np.linalg.norm(direction)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    region = api.find_view(bpy.context)
    region.view_rotation = mathutils.Matrix(np.stack([right, up, back], axis=1).tolist()).to_quaternion()
    region.view_location = location
    region.view_distance = 6.0
    return region


region = look_from([np.cos(np.radians(150)) * 0.9, np.sin(np.radians(150)) * 0.9, 0.44], (1.0, 1.5, 0.0))
assert bpy.ops.rfit.match_view() == {"FINISHED"}
boxes = np.array([o["rfit_fitted_box"] for o in image_fit.children])
world = np.array([list(o.matrix_world.translation) for o in image_fit.children])
assert np.allclose(world, boxes[:, :3], atol=1e-4)  # the recorded boxes moved with the fit
turn = np.array(image_fit.matrix_world.to_3x3())
local = (boxes[:, :3] - np.array(image_fit.location)) @ turn  # box centres in the fit's own (turned) frame
lo, hi = (local - boxes[:, 3:]).min(0), (local + boxes[:, 3:]).max(0)
lo, hi = [np.array(image_fit.location) + turn @ v for v in (lo, hi)]  # z is not turned: lo[2] is the base
# the viewport's eye (view_matrix is only refreshed by a redraw, so from its definition)
eye = np.array(region.view_location + region.view_rotation @ mathutils.Vector((0.0, 0.0, region.view_distance)))
towards_eye = np.array(image_fit.matrix_world.to_3x3().inverted()) @ (eye - (lo + hi) / 2)  # in the fit's own frame
facts["match_view"] = {
    "azimuth_in_fit_frame": float(np.degrees(np.arctan2(towards_eye[1], towards_eye[0]))),
    "image_azimuth": float(np.degrees(np.arctan2(seen[1], seen[0]))),
    "centre": ((lo + hi) / 2).tolist(),
    "base": float(lo[2]),
}
difference = (facts["match_view"]["azimuth_in_fit_frame"] - facts["match_view"]["image_azimuth"] + 180) % 360 - 180
assert abs(difference) < 1.0, facts["match_view"]  # the viewport sees the side the image's camera saw
assert np.allclose(tuple(image_fit.rotation_euler)[:2], (0, 0), atol=1e-6)  # still upright
assert np.allclose(facts["match_view"]["centre"][:2], (1.0, 1.5), atol=1e-4)  # where the viewport looks
assert abs(facts["match_view"]["base"] - 0.5) < 1e-4  # resting at the 3D cursor's height
assert not any(build_module.note_edits(image_fit)), "matching the view is no edit of the parts"
placed = (np.array(image_fit.location), tuple(image_fit.rotation_euler))
again = api.turn_to_view(bpy.context, image_fit, region)  # pressed a second time from the same viewport
assert abs((again["turn_deg"] + 180) % 360 - 180) < 1e-6, again
assert np.allclose(image_fit.location, placed[0], atol=1e-6) and np.allclose(image_fit.rotation_euler, placed[1])
# a fit asked to match the view lands so at once (the panel's checkbox); without a view it stays at the cursor
region = look_from([0.0, -1.0, 0.3], (-1.0, 0.0, 0.0))
result = bpy.ops.rfit.retrieve_and_fit(image_path=image_path, top_k=2, match_view=True)
assert result == {"FINISHED"}
matched = bpy.context.view_layer.objects.active
if json.loads(matched["rfit_info"]).get("view") is None:
    assert "no camera view" in settings.status, settings.status
else:
    centre = np.array([o["rfit_fitted_box"][:3] for o in matched.children]).mean(0)
    assert np.linalg.norm(centre[:2] - (-1.0, 0.0)) < 0.5, centre
bpy.data.objects.remove(matched)
settings.target = "OBJECT"  # back to the scan: the image field stays filled but is not used
bpy.context.view_layer.objects.active = scan
result = bpy.ops.rfit.retrieve_and_fit(top_k=3, refine=False)
assert result == {"FINISHED"}
parent = bpy.context.view_layer.objects.active
assert json.loads(parent["rfit_info"])["target"] == {"object": "scan"}
progress_editable = True
try:
    settings.progress = 0.5
except (AttributeError, TypeError):
    progress_editable = False
assert not progress_editable, "the progress bar must be read-only"

# -- swap to another candidate and back ---------------------------------------------------------
first_source = parent["rfit_source"]
fits_before = sum(1 for o in bpy.data.objects if o.get("rfit_result"))
result = bpy.ops.rfit.use_candidate(rank=1)
assert result == {"FINISHED"}
swapped = bpy.context.view_layer.objects.active
facts["swapped"] = [first_source, swapped["rfit_source"]]
assert swapped["rfit_rank"] == 1 and swapped["rfit_source"] == json.loads(swapped["rfit_candidates"])[1]["source"]
assert sum(1 for o in bpy.data.objects if o.get("rfit_result")) == fits_before  # the fit was replaced
assert bpy.ops.rfit.use_candidate(rank=0) == {"FINISHED"}
fit = bpy.context.view_layer.objects.active
assert fit["rfit_source"] == first_source


def joint_gaps(parent):
    return shared_joint_gaps(parent, settings.index_directory)


def model_size(parent):
    boxes = np.array([list(o.matrix_world.translation) + list(o["rfit_applied_box"][3:]) for o in parent.children])
    return float(np.linalg.norm((boxes[:, :3] + boxes[:, 3:]).max(0) - (boxes[:, :3] - boxes[:, 3:]).min(0)))


# -- scale one part by hand, keep connected: only that part counts as edited, and stays ------------
parts = sorted(fit.children, key=lambda o: o["rfit_part"])
assert len(parts) >= 3, f"the editing checks need a fit of 3 or more parts, got {len(parts)}"
size = model_size(fit)
parts[0].scale = (parts[0].scale[0], parts[0].scale[1], parts[0].scale[2] * 1.3)
bpy.context.view_layer.update()
held_scale = tuple(parts[0].scale)
result = bpy.ops.rfit.enforce_connectivity(keep_symmetry=False)
assert result == {"FINISHED"}
assert np.allclose(tuple(parts[0].scale), held_scale)  # the edited part did not move
facts["edited_after_keep_connected"] = [bool(o.get("rfit_edited")) for o in parts]
assert facts["edited_after_keep_connected"] == [True] + [False] * (len(parts) - 1), facts
facts["joint_gaps_after_keep_connected"] = float(joint_gaps(fit).max(initial=0.0))
assert facts["joint_gaps_after_keep_connected"] < 0.01 * size, facts

# -- refit after keep connected: the edit still counts (the flag survived the rewrite) -------------
assert bpy.ops.rfit.refit(keep_edited=True) == {"FINISHED"}
facts["refit_status"] = settings.status
assert "1 part(s) held" in settings.status, settings.status
assert np.allclose(tuple(parts[0].scale), held_scale, atol=1e-4), (tuple(parts[0].scale), held_scale)
assert [bool(o.get("rfit_edited")) for o in parts] == facts["edited_after_keep_connected"]

# -- residual colours, measured on the boxes as they are (no refit): a part dragged off the scan is the worst --
residuals = [o["rfit_residual"] for o in parts]  # from the Refit's answer
assert all(r >= 0 for r in residuals), residuals
own = [o.material_slots[0].material.name for o in parts]
boxes_before = build_module.current_boxes(fit)[0]
parts[0].location.z += 0.3 * size  # the user drags a part far off the scan
bpy.context.view_layer.update()
assert bpy.ops.rfit.show_residuals() == {"FINISHED"}
quality = sys.modules[package + ".quality"]
facts["residuals_after_wrong_edit"] = [o["rfit_residual"] for o in parts]
assert int(np.argmax(facts["residuals_after_wrong_edit"])) == 0, facts["residuals_after_wrong_edit"]
assert quality.rating(parts[0]["rfit_residual"]) == "poor", facts["residuals_after_wrong_edit"]
for obj in parts:
    slot = obj.material_slots[0]
    assert slot.link == "OBJECT" and np.allclose(
        tuple(slot.material.diffuse_color), quality.residual_colour(obj["rfit_residual"]), atol=0.01
    )
redness = [o.active_material.diffuse_color[0] - o.active_material.diffuse_color[1] for o in parts]
assert int(np.argmax(redness)) == 0, redness  # the misplaced part shows the reddest
assert [o.data.materials[0].name for o in parts] == own  # the model's own materials stay on the meshes
moved = build_module.current_boxes(fit)[0]
assert np.allclose(moved[1:], boxes_before[1:]), "measuring moves nothing"
assert bpy.ops.rfit.hide_residuals() == {"FINISHED"}
assert all(o.material_slots[0].link == "DATA" for o in parts) and [o.active_material.name for o in parts] == own
parts[0].location.z -= 0.3 * size

# -- Reset All clears every flag; live mode: dragging a part re-attaches the others, the dragged
# part stays where it was put -----------------------------------------------------------------------
bpy.context.view_layer.objects.active = fit
assert bpy.ops.rfit.reset_parts(all_parts=True) == {"FINISHED"}
assert not any(o.get("rfit_edited") for o in parts)
settings.keep_symmetry = False
settings.live = True
before = [tuple(o.location) for o in parts]
parts[1].location.z += 0.05 * size
dragged = tuple(parts[1].location)
bpy.context.view_layer.update()
facts["live_moved_others"] = any(
    not np.allclose(o.location, b, atol=1e-6) for k, (o, b) in enumerate(zip(parts, before)) if k != 1
)
facts["live_joint_gap"] = float(joint_gaps(fit).max(initial=0.0))
settings.live = False
assert np.allclose(tuple(parts[1].location), dragged, atol=1e-6)
assert facts["live_moved_others"] and facts["live_joint_gap"] < 0.01 * size, facts
assert bool(parts[1].get("rfit_edited")), "a dragged part counts as edited"

# -- Reset Part clears that part's flag, apply bakes ------------------------------------------------
parts[0].scale[0] *= 1.2
for obj in bpy.context.selected_objects:
    obj.select_set(False)
parts[0].select_set(True)
bpy.context.view_layer.objects.active = parts[0]
bpy.context.view_layer.update()
assert parts[0].get("rfit_edited"), "the depsgraph handler flags a transformed part"
assert bpy.ops.rfit.reset_parts() == {"FINISHED"}
fitted = np.array(parts[0]["rfit_fitted_box"])
assert np.allclose(np.array(parts[0].matrix_world.translation), fitted[:3], atol=1e-4)
assert not parts[0].get("rfit_edited") and parts[1].get("rfit_edited")
assert bpy.ops.rfit.apply_fit() == {"FINISHED"}
assert all(tuple(o.scale) == (1.0, 1.0, 1.0) and not any(k.startswith("rfit_") for k in o.keys()) for o in parts)
corners = np.array([parts[0].matrix_world @ v.co for v in parts[0].data.vertices])
facts["apply_kept_shape"] = bool(np.allclose((corners.max(0) - corners.min(0)) / 2, fitted[3:], atol=1e-3))
assert facts["apply_kept_shape"]

# -- image targets from a script -------------------------------------------------------------------
result = bpy.ops.rfit.retrieve_and_fit(image_path=image_path, top_k=2)
assert result == {"FINISHED"}
facts["image_fit"] = bpy.context.view_layer.objects.active["rfit_source"]
own_size = bpy.context.view_layer.objects.active
# a typed height: the same fit, scaled uniformly to stand that tall on the cursor, its joints still attached
result = bpy.ops.rfit.retrieve_and_fit(image_path=image_path, top_k=2, image_height=1.7)
assert result == {"FINISHED"}
tall = bpy.context.view_layer.objects.active


def world_extent(parent):
    """(low, high) of a fit's part objects in the world: the location and scaled source box of each part."""
    centres = np.array([list(o.matrix_world.translation) for o in parent.children])
    half = np.array([np.array(o["rfit_source_box"][3:]) * np.array(o.scale) for o in parent.children])
    return (centres - half).min(0), (centres + half).max(0)


low, high = world_extent(tall)
own_low, own_high = world_extent(own_size)
facts["typed_height"] = {"height": high[2] - low[2], "base": low[2], "own": own_high[2] - own_low[2]}
facts["typed_height"] = {key: float(value) for key, value in facts["typed_height"].items()}
assert abs(facts["typed_height"]["height"] - 1.7) < 1e-3, facts["typed_height"]
assert abs(facts["typed_height"]["base"] - bpy.context.scene.cursor.location.z) < 1e-3, facts["typed_height"]
assert abs(facts["typed_height"]["own"] - 1.7) > 0.05, "the library model is already 1.7 tall: no scaling seen"
assert tall["rfit_source"] == own_size["rfit_source"]
assert max(joint_gaps(tall), default=0.0) < 1e-3, joint_gaps(tall)
try:
    bpy.ops.rfit.retrieve_and_fit(image_path=library + "/missing.png")
except RuntimeError as error:
    facts["bad_image_error"] = str(error)
assert "cannot read" in facts["bad_image_error"], facts

# -- backend status is true: a changed preference restarts the worker; a failed start says why -----
backend_python = os.environ.pop("RFIT_BACKEND_PYTHON")  # from here on the preference decides
prefs.backend_python = backend_python
first_pid = api._client.process.pid
assert bpy.ops.rfit.check_backend() == {"FINISHED"}
assert api.backend_state()[1] == "CHECKMARK", api.backend_state()
broken = os.path.join(os.path.dirname(out_path), "python-without-packages")
with open(broken, "w") as handle:  # the interpreter without its site-packages: no numpy, no torch
    handle.write(f'#!/bin/sh\nexec {backend_python} -S "$@"\n')
os.chmod(broken, 0o755)
prefs.backend_python = broken
try:
    bpy.ops.rfit.check_backend()
except RuntimeError as error:
    facts["broken_backend_error"] = str(error)
facts["broken_backend_state"] = list(api.backend_state())
assert "has no 'numpy' package" in facts.get("broken_backend_error", ""), facts
assert "pip install" in facts["broken_backend_error"] and facts["broken_backend_state"][1] == "ERROR", facts
prefs.backend_python = backend_python  # fixed: a new worker, and the status says so
assert bpy.ops.rfit.check_backend() == {"FINISHED"}
assert api._client.process.pid != first_pid and api.backend_state()[1] == "CHECKMARK"

# -- a backend that stops answering: the wait ends with a clear message and a fresh worker --------
limits = api.START_LIMIT, api.SILENCE_LIMIT
api.START_LIMIT = api.SILENCE_LIMIT = 0.0  # any wait at all is "too long"
silent_pid = api._client.process.pid
try:
    bpy.ops.rfit.check_backend()
except RuntimeError as error:
    facts["timeout_error"] = str(error)
api.START_LIMIT, api.SILENCE_LIMIT = limits
assert "did not answer" in facts.get("timeout_error", "") and "restarted" in facts["timeout_error"], facts
assert api._client is None and api.backend_state()[1] == "ERROR"  # the silent worker was killed
assert bpy.ops.rfit.check_backend() == {"FINISHED"} and api._client.process.pid != silent_pid

# -- disable cleanly: the worker stops ------------------------------------------------------------
client = sys.modules[package + ".api"]._client
bpy.ops.preferences.addon_disable(module=package)
facts["worker_stopped"] = client is None or not client.alive
assert facts["worker_stopped"]
assert not hasattr(bpy.types.Scene, "rfit")

# -- enabling without numpy (Debian's Blender before python3-numpy) says what to install -------------
import addon_utils  # noqa: E402

errors = []
saved_numpy, sys.modules["numpy"] = sys.modules["numpy"], None
try:
    addon_utils.enable(package, default_set=False, handle_error=lambda error: errors.append(str(error)))
finally:
    sys.modules["numpy"] = saved_numpy
facts["no_numpy_error"] = errors
assert errors and "sudo apt install python3-numpy" in errors[0], errors
assert not hasattr(bpy.types.Scene, "rfit")
with open(out_path, "w") as handle:
    json.dump(facts, handle, indent=1)
print("ok")
