"""The add-on in a real Blender window: Debian's Blender 3.4 under Xvfb.

Installs the legacy zip, opens the sidebar tab, runs "Retrieve and Fit"
through its modal (UI) path, takes a screenshot (kept as a test artifact in
``test-artifacts/``) and undoes the fit in one step.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backend.model.checkpoint import save_checkpoint
from backend.model.networks import JointModel, ModelConfig

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
        ["Xvfb", f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    yield f":{number}"
    server.terminate()
    server.wait(10)


def test_retrieve_and_fit_in_the_blender_ui(tmp_path, display):
    library = tmp_path / "library"
    library.mkdir()
    for category in ("chair", "table", "storage"):
        for i in range(3):
            shutil.copy(DEMO / "library" / category / f"{category}_{i:02d}.glb", library / f"{category}_{i}.glb")
    torch.manual_seed(0)
    checkpoint = ROOT / "backend" / "checkpoints" / "default.pt"
    if not checkpoint.exists():
        checkpoint = tmp_path / "model.pt"
        save_checkpoint(
            checkpoint,
            JointModel(
                ModelConfig(
                    point_width=16,
                    image_width=8,
                    global_code=16,
                    part_code=4,
                    target_code=16,
                    embedding=8,
                    n_points=256,
                    source_points=128,
                )
            ),
        )
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
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    facts = json.loads((out / "facts.json").read_text()) if (out / "facts.json").exists() else {}
    if (out / "panel.png").exists():
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(out / "panel.png", ARTIFACTS / "blender-3.4-panel.png")
    assert done.returncode == 0 and facts.get("ok"), (
        json.dumps(facts, indent=1) + done.stdout[-3000:] + done.stderr[-2000:]
    )
    assert facts["invoke"] == ["RUNNING_MODAL"]  # the modal path, not execute()
    assert facts["parts"] >= 2 and facts["candidates"] >= 2
    assert facts["keep_connected_moved"] and facts["undo_restored_parts"]  # keep connected is one undo step
    assert facts["after_undo"] == 0 and facts["scan_after_undo"]  # one undo step removes the whole fit
