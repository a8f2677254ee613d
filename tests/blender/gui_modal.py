"""Run inside a real Blender window (Xvfb), as a user would: install the add-on,
open its sidebar tab, then through the UI (modal) paths: Check Backend (worker
start), Index, Retrieve and Fit, Esc during a fit, swap a candidate and back,
scale a leg, Keep Connected, Refit, and undo all of it step by step. A
heartbeat timer measures how long the UI ever stops (the longest gap between
its ticks per phase); screenshots of each panel state are saved.

blender --factory-startup --enable-event-simulate START.blend --python gui_modal.py -- ZIP LIBRARY CHECKPOINT
    POINTS.npy IMAGE.png OTHER_LIBRARY ABSENT.npy OUT_DIR
(OTHER_LIBRARY lacks the category of the scan in ABSENT.npy: the panel's "no close match" state.)
Writes OUT_DIR/facts.json and OUT_DIR/*.png; exits non-zero on failure (the facts say where).
"""

import json
import os
import sys
import time
import traceback

import bpy
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from joints import joint_gaps  # noqa: E402

args = sys.argv[sys.argv.index("--") + 1 :]
zip_path, library, checkpoint, points_path, image_path, other_library, absent_path, out_dir = args
facts = {"blender": bpy.app.version_string, "steps": [], "gaps": {}, "addon_time": {}, "screenshots": []}
TIME_LIMIT = 300.0
started = time.monotonic()
beat = {"phase": "", "last": 0.0, "addon": 0.0, "cpu": 0.0, "addon_at_last": 0.0, "cpu_at_last": 0.0}
LONG = 0.25  # the bound on a UI stall


def enter(phase: str) -> None:
    """Measure ``phase`` from now. The driver's own work just before, in the same timer call (a screenshot, scene
    set-up), is not a stall of the phase: the first gap counts from here."""
    beat["phase"] = phase
    beat["last"], beat["addon_at_last"], beat["cpu_at_last"] = time.monotonic(), beat["addon"], time.thread_time()


def heartbeat():
    """Ticks every 20 ms. Per phase: the longest gap between ticks (how long the UI stood still), every
    gap (for percentiles), and for each gap over LONG how much of it Blender's thread spent inside the
    add-on (timed calls, see ``timed``) and on the CPU at all (``time.thread_time``): a stall with neither
    is the machine (the process was not scheduled), not the add-on; the idle phases measure that baseline."""
    now, cpu = time.monotonic(), time.thread_time()
    if beat["phase"] and beat["last"]:
        gap = now - beat["last"]
        phase = beat["phase"]
        facts["gaps"][phase] = max(facts["gaps"].get(phase, 0.0), gap)
        facts.setdefault("all_gaps", {}).setdefault(phase, []).append(round(gap, 4))
        addon, busy = beat["addon"] - beat["addon_at_last"], cpu - beat["cpu_at_last"]
        if gap > LONG:
            facts.setdefault("long_gaps", []).append(
                {
                    "phase": phase,
                    "at": round(beat["last"] - started, 2),
                    "gap": round(gap, 3),
                    "in_addon": round(addon, 3),
                    "main_thread_cpu": round(busy, 3),
                }
            )
        slowest = facts.setdefault("addon_share_of_gaps", {}).get(phase, 0.0)
        facts["addon_share_of_gaps"][phase] = max(slowest, addon)
    beat["last"], beat["addon_at_last"], beat["cpu_at_last"] = now, beat["addon"], cpu
    return 0.02


def gap_summary() -> dict:
    """Per phase: ticks, median, 99th percentile and longest gap, gaps over LONG, and the longest time the
    add-on held Blender's thread within one gap."""
    out = {}
    for phase, gaps in facts.get("all_gaps", {}).items():
        values = np.array(gaps)
        out[phase] = {
            "ticks": len(values),
            "median": round(float(np.median(values)), 3),
            "p99": round(float(np.percentile(values, 99)), 3),
            "max": round(float(values.max()), 3),
            "over_0.25": int((values > LONG).sum()),
            "in_addon_max": round(facts["addon_share_of_gaps"].get(phase, 0.0), 3),
        }
    return out


def finish(ok: bool) -> None:
    facts["ok"] = ok
    facts["gap_summary"] = gap_summary()
    facts.pop("all_gaps", None)
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


def override(**extra):
    window, area, region = view3d()
    return bpy.context.temp_override(window=window, area=area, region=region, **extra)


def invoke(operator, phase: str = "", **props):
    enter(phase)  # the heartbeat counts the invoke itself (reading the target, starting the worker)
    with override():
        result = operator("INVOKE_DEFAULT", **props)
    assert result == {"RUNNING_MODAL"}, (operator, result)  # the modal path, not execute()


def api():
    return sys.modules["rfit.api"]


def fits():
    return [o for o in bpy.data.objects if o.get("rfit_result")]


def the_fit():
    found = fits()
    assert len(found) == 1, [o.name for o in found]
    return found[0]


def parts_of(parent):
    return sorted(parent.children, key=lambda o: o["rfit_part"])


def boxes_of(parent) -> np.ndarray:
    """(K, 6) world boxes the part objects show (centre, half size)."""
    bpy.context.view_layer.update()  # objects built a moment ago have no world matrix before this
    return np.array(
        [
            list(o.matrix_world.translation) + [a * b for a, b in zip(o["rfit_source_box"][3:], o.scale)]
            for o in parts_of(parent)
        ]
    )


def extent(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, :3] - boxes[:, 3:]).min(0), (boxes[:, :3] + boxes[:, 3:]).max(0)])


def select(objects, active) -> None:
    for obj in bpy.context.selected_objects:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = active


def wait_for_backend(phase: str, timeout: float = 120.0, record=None):
    """Yield (let Blender run) until no job is left; the heartbeat measures the phase."""
    if beat["phase"] != phase:  # else the phase began with its invoke, which it counts
        enter(phase)
    deadline = time.monotonic() + timeout
    while api().active_jobs() or api()._state["hello"] is not None:
        if record is not None:
            record()
        assert time.monotonic() < deadline, f"{phase}: no answer in {timeout} s ({bpy.context.scene.rfit.status})"
        yield 0.05
    beat["phase"] = ""
    facts["steps"].append(f"{phase}: {bpy.context.scene.rfit.status}")


def screenshot(name: str):
    """Frame the fit (else the scan) and capture the window; the selection is left as it was."""
    selected, active = list(bpy.context.selected_objects), bpy.context.view_layer.objects.active
    current = api().fit_parent(active) if fits() else None
    shown = current or (fits()[0] if fits() else bpy.data.objects.get("scan"))
    if shown is not None:
        select([shown, *shown.children], shown)
        with override():
            bpy.ops.view3d.view_selected()
        select(selected, active)
    yield 0.8  # let the panels and previews redraw
    path = os.path.join(out_dir, f"{name}.png")
    with override():
        bpy.ops.screen.screenshot(filepath=path)
    facts["screenshots"].append(name)


def time_the_addon() -> None:
    """Time every call Blender makes into the add-on on its own thread (operators' invoke and
    modal, panel drawing): the longest per phase is how long the add-on itself held the UI."""
    operators, panels = sys.modules["rfit.ui.operators"], sys.modules["rfit.ui.panels"]
    methods = [
        (cls, name) for cls in operators.classes for name in ("invoke", "modal", "execute") if hasattr(cls, name)
    ]
    methods += [(cls, "draw") for cls in panels.classes if hasattr(cls, "draw")]
    methods += [(cls, "draw_item") for cls in panels.classes if hasattr(cls, "draw_item")]
    for cls, name in methods:
        setattr(cls, name, timed(getattr(cls, name), f"{cls.__name__}.{name}"))


def timed(original, label):
    """``original`` wrapped with a timer, with its own argument list (Blender passes as many
    arguments as the function declares)."""

    def record(t0):
        spent = time.monotonic() - t0
        beat["addon"] += spent
        slowest = facts["addon_time"].setdefault(beat["phase"] or "-", [0.0, ""])
        if spent > slowest[0]:
            slowest[:] = [spent, label]

    count = original.__code__.co_argcount
    if count == 2:

        def wrapper(self, context):
            t0 = time.monotonic()
            try:
                return original(self, context)
            finally:
                record(t0)
    elif count == 3:

        def wrapper(self, context, event):
            t0 = time.monotonic()
            try:
                return original(self, context, event)
            finally:
                record(t0)
    else:

        def wrapper(self, context, layout, data, item, icon, active_data, active_propname, index):
            t0 = time.monotonic()
            try:
                return original(self, context, layout, data, item, icon, active_data, active_propname, index)
            finally:
                record(t0)

    return wrapper


def setup() -> None:
    bpy.ops.preferences.addon_install(filepath=zip_path, overwrite=True)
    bpy.ops.preferences.addon_enable(module="rfit")
    bpy.context.preferences.addons["rfit"].preferences.checkpoint = checkpoint
    for obj in list(bpy.data.objects):  # a clean scene with the scan as the active object
        bpy.data.objects.remove(obj)
    points = np.load(points_path).astype(float)
    mesh = bpy.data.meshes.new("scan")
    mesh.from_pydata(points.tolist(), [], [])
    scan = bpy.data.objects.new("scan", mesh)
    bpy.context.scene.collection.objects.link(scan)
    select([scan], scan)
    settings = bpy.context.scene.rfit
    settings.library_directory = library
    settings.refine = False
    view3d()[1].spaces.active.show_region_ui = True
    bpy.ops.ed.undo_push(message="scan ready")
    time_the_addon()


def script():
    setup()
    yield 0.5
    # Show the add-on's tab: Ctrl+wheel over the sidebar steps through its tabs, as a user can.
    window, area, _ = view3d()
    ui = next(r for r in area.regions if r.type == "UI")
    x, y = ui.x + ui.width // 2, ui.y + ui.height // 2
    window.event_simulate(type="MOUSEMOVE", value="NOTHING", x=x, y=y)
    for _ in range(3):
        window.event_simulate(type="WHEELDOWNMOUSE", value="PRESS", x=x, y=y, ctrl=True)
    viewport = view3d()[2]  # then away from the sidebar, so no tooltip covers it
    window.event_simulate(type="MOUSEMOVE", value="NOTHING", x=viewport.x + 50, y=viewport.y + 50)
    yield 0.5
    facts["sidebar_width"] = ui.width
    yield from screenshot("addon_not_started")
    settings = bpy.context.scene.rfit

    enter("idle")
    yield 2.0
    enter("idle redraw")
    for _ in range(20):
        for area in bpy.context.screen.areas:
            area.tag_redraw()
        yield 0.1
    beat["phase"] = ""
    # -- worker start and indexing, never freezing the UI ------------------------------------------
    invoke(bpy.ops.rfit.check_backend, "worker start")
    yield from wait_for_backend("worker start")
    facts["backend_state"] = api().backend_state()
    assert facts["backend_state"][1] == "CHECKMARK", facts["backend_state"]
    invoke(bpy.ops.rfit.index_library, "index")
    yield from wait_for_backend("index")
    assert os.path.exists(os.path.join(settings.index_directory, "manifest.json")), settings.status

    # -- fit: progress text from the worker's stages ---------------------------------------------------
    invoke(bpy.ops.rfit.retrieve_and_fit, "fit")
    job = api().active_jobs()[-1]
    yield from wait_for_backend("fit")
    facts["fit_progress_texts"] = list(job.texts)
    assert not job.error, job.error
    parent = the_fit()
    facts["result"], facts["parts"] = parent["rfit_source"], len(parent.children)
    facts["candidates"] = len(settings.candidates)
    last = bpy.context.window_manager.operators[-1]
    facts["redo_panel"] = {k: getattr(last.properties, k) for k in ("target", "object_name", "top_k", "yaw_search")}
    facts["redo_panel"]["operator"] = last.bl_idname
    select([parent, *parent.children], parent)
    yield from screenshot("addon_fitted")
    fitted_boxes = boxes_of(parent)

    # -- Esc during a fit: stops at once, nothing in the scene changes ----------------------------------
    names_before = sorted(o.name for o in bpy.data.objects)
    select([bpy.data.objects["scan"]], bpy.data.objects["scan"])
    invoke(bpy.ops.rfit.retrieve_and_fit, refine=True, yaw_search=4)  # a longer fit, to press Esc during
    yield 0.3
    yield from screenshot("addon_progress")
    assert api().active_jobs(), "the fit ended before Esc could be pressed"
    job = api().active_jobs()[-1]
    pressed = time.monotonic()
    enter("esc")
    view3d()[0].event_simulate(type="ESC", value="PRESS", x=x, y=y)
    viewport = view3d()[2]  # the pointer off the sidebar again, so no tooltip covers the screenshots
    view3d()[0].event_simulate(type="MOUSEMOVE", value="NOTHING", x=viewport.x + 50, y=viewport.y + 50)
    while api().active_jobs() and time.monotonic() - pressed < 5:
        yield 0.01
    facts["esc_seconds"] = time.monotonic() - pressed
    beat["phase"] = ""
    facts["esc_job"] = {"error": job.error, "texts": job.texts, "status": settings.status}
    yield 0.5
    facts["esc_scene_unchanged"] = sorted(o.name for o in bpy.data.objects) == names_before
    parent = the_fit()
    facts["esc_fit_unchanged"] = bool(np.allclose(boxes_of(parent), fitted_boxes))
    select([parent], parent)

    # -- swap to candidate 2 and back ------------------------------------------------------------------
    invoke(bpy.ops.rfit.use_candidate, "swap", rank=1)
    yield from wait_for_backend("swap")
    assert the_fit()["rfit_rank"] == 1, settings.status
    invoke(bpy.ops.rfit.use_candidate, "swap", rank=0)
    yield from wait_for_backend("swap")
    parent = the_fit()
    facts["swapped_back"] = [
        parent["rfit_source"],
        parent["rfit_rank"],
        float(np.abs(boxes_of(parent) - fitted_boxes).max()),
    ]
    assert parent["rfit_source"] == facts["result"] and np.allclose(boxes_of(parent), fitted_boxes, atol=1e-5)

    # -- scale a leg by 1.3 in Z with Blender's own transform -------------------------------------------
    boxes = boxes_of(parent)
    size = float(np.linalg.norm(np.diff(extent(boxes), axis=0)))
    bottoms = boxes[:, 2] - boxes[:, 5]
    on_floor = np.flatnonzero(bottoms < bottoms.min() + 0.02 * size)
    leg = int(on_floor[np.argmin(boxes[on_floor, 3] * boxes[on_floor, 4])])
    leg_object = parts_of(parent)[leg]
    facts["leg"] = leg_object.name
    select([leg_object], leg_object)
    with override(active_object=leg_object, object=leg_object):
        # "EXEC_DEFAULT", True: pushes an undo step like the user's own transform does
        bpy.ops.transform.resize("EXEC_DEFAULT", True, value=(1.0, 1.0, 1.3), orient_type="GLOBAL")
    yield 0.3
    edited = boxes_of(parent)
    assert abs(edited[leg, 5] / boxes[leg, 5] - 1.3) < 1e-3, (edited[leg], boxes[leg])
    edit_change = float(np.abs(extent(edited[leg : leg + 1]) - extent(boxes[leg : leg + 1])).max())

    # -- Keep Connected (symmetry on, the panel's default) keeps the leg and the model's extent ----------
    invoke(bpy.ops.rfit.enforce_connectivity, "keep connected")
    yield from wait_for_backend("keep connected")
    connected = boxes_of(parent)
    facts["keep_connected_leg_change"] = float(np.abs(connected[leg] - edited[leg]).max())
    facts["edit_change"] = edit_change  # how far the leg's faces moved
    facts["keep_connected_extent_change"] = float(np.abs(extent(connected) - extent(boxes)).max())
    facts["keep_connected_others_moved"] = float(np.abs(np.delete(connected - edited, leg, axis=0)).max())
    facts["edited_flags_after_keep_connected"] = [bool(o.get("rfit_edited")) for o in parts_of(parent)]
    facts["model_size"] = size
    yield from screenshot("addon_edited")

    # -- Refit holds the leg and does not raise the chamfer ----------------------------------------------
    select([parent], parent)
    invoke(bpy.ops.rfit.refit, "refit")
    job = api().active_jobs()[-1]
    yield from wait_for_backend("refit")
    assert not job.error, job.error
    refitted = boxes_of(parent)
    facts["refit_leg_change"] = float(np.abs(refitted[leg] - edited[leg]).max())
    header = job.answer.header
    facts["refit_chamfer"] = {
        key: header.get(key) for key in ("chamfer_before_x100", "chamfer_start_x100", "chamfer_after_x100")
    }
    facts["refit_chamfer"]["measured_x100"] = header["candidates"][0]["measured_chamfer_x100"]
    facts["refit_status"] = settings.status
    facts["edited_flags_after_refit"] = [bool(o.get("rfit_edited")) for o in parts_of(parent)]
    yield from screenshot("addon_refitted")

    # -- undo, one step at a time: refit, keep connected, resize, the two swaps, then the fit ------------
    def undo():
        with override():
            bpy.ops.ed.undo()

    undone = {}
    facts["undo_probe"] = []
    for name, expected in (("refit", connected), ("keep connected", edited), ("resize", fitted_boxes)):
        undo()
        yield 0.2
        now = boxes_of(the_fit())
        undone[name] = bool(now.shape == expected.shape and np.allclose(now, expected, atol=1e-5))
        facts["undo_probe"].append([name, len(now), the_fit()["rfit_rank"]])
    for name in ("swap back", "swap"):
        undo()
        yield 0.2
        undone[name] = the_fit()["rfit_rank"] == (1 if name == "swap back" else 0)
    facts["undo_steps"] = undone
    undos = 0
    while fits() and undos < 5:
        undo()
        undos += 1
        yield 0.2
        assert not [o.name for o in bpy.data.objects if "rfit_part" in o and not fits()], "a half-removed fit"
    facts["undos_to_remove_fit"] = undos
    facts["after_undo"] = sum(1 for o in bpy.data.objects if o.get("rfit_result") or "rfit_part" in o)
    facts["scan_after_undo"] = "scan" in bpy.data.objects

    # -- Live mode while dragging: requests coalesce, joints re-attach, the dragged part stays --------
    with override():
        bpy.ops.ed.redo()  # the fit again, as first built
    yield 0.3
    parent, settings = the_fit(), bpy.context.scene.rfit  # undo replaced every datablock: fetch again
    sent = []
    module = api()
    original_job = module.keep_connected_job
    module.keep_connected_job = lambda *a, **k: sent.append(1) or original_job(*a, **k)
    settings.keep_symmetry = False
    settings.live = True
    dragged = parts_of(parent)[leg]
    enter("live")
    for _ in range(8):  # eight small drag steps, 20 ms apart, like a mouse drag
        dragged.location.z += 0.005 * size
        yield 0.02
    put = tuple(dragged.location)
    deadline = time.monotonic() + 30
    while (module.active_jobs() or not sent) and time.monotonic() < deadline:
        yield 0.05
    yield 0.3
    beat["phase"] = ""
    settings.live = False
    module.keep_connected_job = original_job
    facts["live_requests"] = len(sent)
    facts["live_dragged_kept"] = bool(np.allclose(tuple(dragged.location), put, atol=1e-6))
    facts["live_joint_gap"] = float(joint_gaps(parent, settings.index_directory).max(initial=0.0))

    # -- residual colours, measured by the worker while the UI runs ----------------------------------------
    select([parent], parent)
    invoke(bpy.ops.rfit.show_residuals, "residuals")
    yield from wait_for_backend("residuals")
    facts["residuals_shown"] = [bool(o.get("rfit_residual_shown")) for o in parts_of(parent)]
    facts["residual_status"] = settings.status
    yield from screenshot("addon_residuals")
    with override():
        bpy.ops.rfit.hide_residuals()

    # -- an image target: the panel's file field and Match View; the fit lands at the cursor or matched ---
    settings.image_path = image_path  # picking a file selects the Image target
    settings.match_view = True
    bpy.context.scene.cursor.location = (2.0, 0.0, 0.0)
    yield from screenshot("addon_image_target")
    invoke(bpy.ops.rfit.retrieve_and_fit, "image fit")
    yield from wait_for_backend("image fit")
    image_fit = [o for o in fits() if "image" in json.loads(o["rfit_info"])["target"]]
    facts["image_fit"] = {
        "fits": len(image_fit),
        "view": json.loads(image_fit[0]["rfit_info"]).get("view") if image_fit else None,
        "status": settings.status,
    }
    if image_fit:
        select([image_fit[0]], image_fit[0])
    yield from screenshot("addon_image_fit")
    settings.target, settings.match_view = "OBJECT", False

    # -- a library without the scan's category: "No close match in this library" -----------------------
    points = np.load(absent_path).astype(float)
    mesh = bpy.data.meshes.new("absent scan")
    mesh.from_pydata(points.tolist(), [], [])
    absent = bpy.data.objects.new("absent scan", mesh)
    absent.location = (-2.5, 0.0, 0.0)
    bpy.context.scene.collection.objects.link(absent)
    settings.library_directory, settings.index_directory = other_library, ""
    invoke(bpy.ops.rfit.index_library, "index")
    yield from wait_for_backend("index")
    select([absent], absent)
    invoke(bpy.ops.rfit.retrieve_and_fit, "fit")
    yield from wait_for_backend("fit")
    quality = sys.modules["rfit.quality"]
    facts["absent_chamfers"] = [c.chamfer for c in settings.candidates]
    facts["no_close_match"] = quality.no_close_match(
        [c.chamfer if c.chamfer >= 0 else None for c in settings.candidates]
    )
    yield from screenshot("addon_no_match")

    enter("idle after")  # the machine's own stalls, measured again at the end
    yield 2.0
    beat["phase"] = ""

    # -- a backend Python without the packages: the panel says which is missing and what to do -------
    broken = os.path.join(out_dir, "python-without-packages")
    with open(broken, "w") as handle:
        handle.write(f'#!/bin/sh\nexec {os.environ["RFIT_BACKEND_PYTHON"]} -S "$@"\n')
    os.chmod(broken, 0o755)
    del os.environ["RFIT_BACKEND_PYTHON"]
    bpy.context.preferences.addons["rfit"].preferences.backend_python = broken  # restarts the worker
    deadline = time.monotonic() + 30
    while api().backend_state()[1] != "ERROR" and time.monotonic() < deadline:
        with override():
            api().pump()
        yield 0.1
    facts["broken_backend_state"] = api().backend_state()
    select([bpy.data.objects["scan"]], bpy.data.objects["scan"])
    yield from screenshot("addon_backend_failed")
    bpy.ops.preferences.addon_disable(module="rfit")
    finish(True)


steps = script()


def tick():
    try:
        assert time.monotonic() - started < TIME_LIMIT, f"timed out after {facts['steps']}"
        return next(steps)
    except StopIteration:
        finish(True)
    except Exception:
        facts["error"] = traceback.format_exc()
        finish(False)
    return None


bpy.app.timers.register(heartbeat, first_interval=0.5)
bpy.app.timers.register(tick, first_interval=1.0)
