"""The add-on in a real Blender window: Debian's Blender 3.4 under Xvfb.

Installs the legacy zip, opens the sidebar tab and, through the modal (UI)
paths, starts the worker, indexes, fits, cancels a fit with Esc, swaps a
candidate, scales a leg, keeps it connected, refits and undoes it all
(tests/blender/gui_modal.py). Screenshots are kept in ``test-artifacts/``.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "backend" / "demo"
ARTIFACTS = ROOT / "test-artifacts"


def have_gui_tools() -> bool:
    return shutil.which("blender") is not None and shutil.which("Xvfb") is not None


@pytest.fixture
def display(require):
    require(have_gui_tools(), "Debian's Blender and Xvfb", "apt-get install blender xvfb python3-numpy")
    number = 90 + os.getpid() % 9
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1024x640x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    yield f":{number}"
    server.terminate()
    server.wait(10)


def windsor_chair_scan() -> np.ndarray:
    """(4096, 3) surface samples of a windsor chair of the second generator (training/data/ood.py)."""
    import trimesh

    from training.data import ood

    mesh = trimesh.util.concatenate(list(ood.generate("chair", 1, 0).parts.values()))
    return np.asarray(trimesh.sample.sample_surface(mesh, 4096, seed=0)[0], np.float32)


def test_retrieve_and_fit_in_the_blender_ui(tmp_path, display):
    library = tmp_path / "library"
    library.mkdir()
    for category in ("chair", "table", "storage"):
        for i in range(3):
            shutil.copy(DEMO / "library" / category / f"{category}_{i:02d}.glb", library / f"{category}_{i}.glb")
    other = tmp_path / "tables and storage"  # no chairs: a chair scan finds no close match there
    other.mkdir()
    for category in ("table", "storage"):
        for i in range(3):
            shutil.copy(DEMO / "library" / category / f"{category}_{i:02d}.glb", other / f"{category}_{i}.glb")
    absent = tmp_path / "windsor_chair.npy"
    np.save(absent, windsor_chair_scan())
    checkpoint = ROOT / "backend" / "checkpoints" / "default.pt"
    if not checkpoint.exists():
        checkpoint = tmp_path / "model.pt"
        tiny_checkpoint(checkpoint)
    built = subprocess.run(
        [sys.executable, "build_addon.py", "--out", str(tmp_path / "dist"), "--lean"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    legacy = built.stdout.split()[1]
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "DISPLAY": display, "RFIT_BACKEND_PYTHON": sys.executable}
    start = tmp_path / "start.blend"  # opening a file skips the splash screen
    subprocess.run(
        [
            "blender",
            "-b",
            "--factory-startup",
            "--python-expr",
            f"import bpy; bpy.ops.wm.save_as_mainfile(filepath={str(start)!r})",
        ],
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [
            "blender",
            "--factory-startup",
            "--enable-event-simulate",
            str(start),
            "--python",
            str(ROOT / "tests" / "blender" / "gui_modal.py"),
            "--",
            legacy,
            str(library),
            str(checkpoint),
            str(DEMO / "targets" / "chair_full.npy"),
            str(DEMO / "targets" / "chair.png"),
            str(other),
            str(absent),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    facts = json.loads((out / "facts.json").read_text()) if (out / "facts.json").exists() else {}
    ARTIFACTS.mkdir(exist_ok=True)
    for picture in [*out.glob("*.png"), *out.glob("facts.json")]:
        shutil.copy(picture, ARTIFACTS / f"blender-3.4-{picture.name}")
    assert done.returncode == 0 and facts.get("ok"), (
        json.dumps(facts, indent=1) + done.stdout[-3000:] + done.stderr[-2000:]
    )
    report = json.dumps(facts, indent=1)
    # Never frozen. The add-on's own calls on Blender's thread (invoke, modal, panel drawing) stay short in
    # every phase: every stall of the heartbeat over 0.25 s is attributed, and the add-on's share of it (time
    # inside its calls) stays under 0.25 s whatever the machine's load. And where the machine schedules Blender
    # at once (a heartbeat with nothing to do stalls under 0.1 s, before and after), the heartbeat never stops
    # during worker start, fit, swap, Keep Connected and Refit (the phases) for 0.25 s more than one bare
    # redraw of every area costs here: the software OpenGL under Xvfb needs 0.2-0.3 s a redraw at 1600 x 1000,
    # about 0.1 s at this 1024 x 640 screen, where a GPU needs milliseconds (gap_summary holds the percentiles).
    quiet = facts["gaps"]["idle"] < 0.1 and facts["gaps"]["idle after"] < 0.1
    redraw = facts["gaps"]["idle redraw"]
    for phase in ("worker start", "fit", "swap", "keep connected", "refit", "esc", "residuals", "image fit"):
        assert facts["addon_time"][phase][0] < 0.25, (phase, report)
        assert facts["addon_share_of_gaps"][phase] < 0.25, (phase, report)
    for phase in ("worker start", "fit", "swap", "keep connected", "refit"):
        assert not quiet or facts["gaps"][phase] < 0.25 + redraw, (phase, report)
    assert len(facts["fit_progress_texts"]) >= 3, report  # real stages from the worker, not one "fitting"
    assert not quiet or facts["esc_seconds"] < 0.5, report
    assert facts["esc_scene_unchanged"] and facts["esc_fit_unchanged"], report
    # the redo panel shows what was used, not "Candidates 0"
    assert facts["redo_panel"] == {
        "target": "OBJECT",
        "object_name": "scan",
        "top_k": 5,
        "yaw_search": 1,
        "operator": "RFIT_OT_retrieve_and_fit",
    }, report
    assert facts["parts"] >= 3 and facts["candidates"] >= 2
    # scale a leg, Keep Connected: the leg stays, the model stays within the edit's extent
    size = facts["model_size"]
    assert facts["keep_connected_leg_change"] < 1e-4 * size, report
    # the model's box moves no more than the leg's own faces did (issue 16's "within the edit's extent")
    assert facts["keep_connected_extent_change"] <= facts["edit_change"] + 0.01 * size, report
    leg_flags = facts["edited_flags_after_keep_connected"]
    assert sum(leg_flags) == 1 and facts["edited_flags_after_refit"] == leg_flags, report
    # Refit holds the leg and does not raise the chamfer
    assert facts["refit_leg_change"] < 1e-4 * size and "1 part(s) held" in facts["refit_status"], report
    chamfer = facts["refit_chamfer"]
    assert chamfer["chamfer_after_x100"] <= chamfer["chamfer_start_x100"] + 1e-9, report
    assert chamfer["chamfer_after_x100"] <= chamfer["chamfer_before_x100"] + 1e-3, report
    # undo takes back one step at a time, and ONE undo removes a fit
    assert all(facts["undo_steps"].values()), report
    assert facts["undos_to_remove_fit"] == 1, report
    assert facts["after_undo"] == 0 and facts["scan_after_undo"], report
    # Live mode: fewer requests than drag steps (only the latest state is sent), joints re-attached
    assert 1 <= facts["live_requests"] < 8 and facts["live_dragged_kept"], report
    assert facts["live_joint_gap"] < 0.01 * size, report
    assert facts["addon_time"]["live"][0] < 0.25, report
    # a backend that cannot start says what is missing and what to do, in the panel
    # residual colours come from the worker while the UI runs; an image fit lands (the view, when the backend
    # estimates one, turns it; otherwise the status says it stays at the cursor)
    assert facts["residuals_shown"] and all(facts["residuals_shown"]), report
    assert facts["image_fit"]["fits"] == 1, report
    assert facts["image_fit"]["view"] is not None or "no camera view" in facts["image_fit"]["status"], report
    assert facts["no_close_match"], report  # a chair against tables and storage: the panel says so
    text, icon = facts["broken_backend_state"]
    assert icon == "ERROR" and "has no 'numpy' package" in text and "pip install" in text, report
