"""Run inside a real Blender window (Xvfb): install the add-on, open its panel,
run "Retrieve and Fit" through the modal (UI) path, screenshot, quit.

blender --factory-startup --python gui_modal.py -- ZIP LIBRARY CHECKPOINT POINTS.npy OUT_DIR
Writes OUT_DIR/facts.json and OUT_DIR/panel.png; exits non-zero on failure.
"""

import json
import os
import sys
import time
import traceback

import bpy

args = sys.argv[sys.argv.index("--") + 1 :]
zip_path, library, checkpoint, points_path, out_dir = args
facts = {"blender": bpy.app.version_string, "steps": []}
started = time.monotonic()


def finish(ok: bool) -> None:
    facts["ok"] = ok
    with open(os.path.join(out_dir, "facts.json"), "w") as handle:
        json.dump(facts, handle, indent=1)
    os._exit(0 if ok else 1)  # quit at once, whatever the window manager is doing


def view3d():
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                region = next(r for r in area.regions if r.type == "WINDOW")
                return window, area, region
    raise RuntimeError("no 3D viewport")


def setup() -> None:
    bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
    bpy.ops.preferences.addon_enable(module="rfit")
    bpy.context.preferences.addons["rfit"].preferences.checkpoint = checkpoint
    # a clean scene with the scan as the active object
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    import numpy as np

    points = np.load(points_path).astype(float)
    mesh = bpy.data.meshes.new("scan")
    mesh.from_pydata(points.tolist(), [], [])
    scan = bpy.data.objects.new("scan", mesh)
    bpy.context.scene.collection.objects.link(scan)
    bpy.context.view_layer.objects.active = scan
    scan.select_set(True)
    assert bpy.ops.rfit.index_library(directory=library) == {"FINISHED"}
    window, area, region = view3d()
    area.spaces.active.show_region_ui = True
    bpy.context.scene.rfit.refine = False
    bpy.ops.ed.undo_push(message="scan ready")
    facts["steps"].append("set up")


state = {"phase": "setup"}


def tick():
    try:
        if time.monotonic() - started > 240:
            facts["error"] = f"timed out in phase {state['phase']}"
            finish(False)
        if state["phase"] == "setup":
            setup()
            state["phase"] = "open_tab" if bpy.app.use_event_simulate else "invoke"
            return 0.5
        if state["phase"] == "open_tab":
            # Show the add-on's sidebar tab: Ctrl+wheel over the sidebar steps
            # through its tabs (Item, Tool, View, Retrieve & Fit), as a user would.
            window, area, _ = view3d()
            ui = next(r for r in area.regions if r.type == "UI")
            x, y = ui.x + ui.width // 2, ui.y + ui.height // 2
            window.event_simulate(type="MOUSEMOVE", value="NOTHING", x=x, y=y)
            for _ in range(3):
                window.event_simulate(type="WHEELDOWNMOUSE", value="PRESS", x=x, y=y, ctrl=True)
            state["phase"] = "invoke"
            return 0.5
        if state["phase"] == "invoke":
            window, area, region = view3d()
            with bpy.context.temp_override(window=window, area=area, region=region):
                result = bpy.ops.rfit.retrieve_and_fit("INVOKE_DEFAULT")
            facts["invoke"] = sorted(result)
            assert result == {"RUNNING_MODAL"}, result
            state["phase"] = "waiting"
            return 0.5
        if state["phase"] == "waiting":
            fits = [o for o in bpy.data.objects if o.get("rfit_result")]
            if not fits:
                facts["status"] = bpy.context.scene.rfit.status
                return 0.5
            parent = fits[0]
            for obj in bpy.context.selected_objects:
                obj.select_set(False)
            for obj in [parent, *parent.children]:
                obj.select_set(True)
            facts["result"] = parent["rfit_source"]
            facts["parts"] = len(parent.children)
            facts["status"] = bpy.context.scene.rfit.status
            facts["candidates"] = len(bpy.context.scene.rfit.candidates)
            state["phase"] = "screenshot"
            return 1.0  # let the panel redraw with the candidates
        if state["phase"] == "screenshot":
            window, area, region = view3d()
            path = os.path.join(out_dir, "panel.png")
            with bpy.context.temp_override(window=window, area=area, region=region):
                bpy.ops.view3d.view_selected()
            state["phase"] = "capture"
            state["path"] = path
            return 1.0
        if state["phase"] == "capture":
            window, area, region = view3d()
            path = state["path"]
            with bpy.context.temp_override(window=window, area=area, region=region):
                bpy.ops.screen.screenshot(filepath=path)
            facts["screenshot"] = os.path.exists(path)
            # Edit a part, keep connected, undo: the other parts come back.
            parent = next(o for o in bpy.data.objects if o.get("rfit_result"))
            parts = sorted(parent.children, key=lambda o: o["rfit_part"])
            parts[0].scale[2] *= 1.3
            bpy.ops.ed.undo_push(message="scale a part")
            before = [tuple(o.location) for o in parts[1:]]
            with bpy.context.temp_override(
                window=window, area=area, region=region, active_object=parts[0], object=parts[0]
            ):
                assert bpy.ops.rfit.enforce_connectivity(keep_symmetry=False) == {"FINISHED"}
            parts = sorted(
                next(o for o in bpy.data.objects if o.get("rfit_result")).children, key=lambda o: o["rfit_part"]
            )
            facts["keep_connected_moved"] = any(tuple(o.location) != b for o, b in zip(parts[1:], before))
            with bpy.context.temp_override(window=window, area=area, region=region):
                bpy.ops.ed.undo()
            parts = sorted(
                next(o for o in bpy.data.objects if o.get("rfit_result")).children, key=lambda o: o["rfit_part"]
            )
            facts["undo_restored_parts"] = all(
                all(abs(x - y) < 1e-6 for x, y in zip(o.location, b)) for o, b in zip(parts[1:], before)
            )
            # Undo back past the fit: the whole fit goes, in one step, and the scan stays.
            undos = 0
            while any(o.get("rfit_result") for o in bpy.data.objects) and undos < 5:
                with bpy.context.temp_override(window=window, area=area, region=region):
                    bpy.ops.ed.undo()
                undos += 1
                leftovers = [
                    o.name
                    for o in bpy.data.objects
                    if "rfit_part" in o and not any(p.get("rfit_result") for p in bpy.data.objects)
                ]
                assert not leftovers, leftovers  # never a half-removed fit
            facts["undos_to_remove_fit"] = undos
            facts["after_undo"] = sum(1 for o in bpy.data.objects if o.get("rfit_result") or "rfit_part" in o)
            facts["scan_after_undo"] = "scan" in bpy.data.objects
            bpy.ops.preferences.addon_disable(module="rfit")
            finish(
                facts["screenshot"]
                and facts["parts"] >= 2
                and facts["after_undo"] == 0
                and facts["scan_after_undo"]
                and facts["undo_restored_parts"]
            )
    except Exception:
        facts["error"] = traceback.format_exc()
        finish(False)
    return None


bpy.app.timers.register(tick, first_interval=1.0)
