"""The add-on, installed from the built zip into Blender (the bpy wheel), driven headless."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "backend" / "demo"


def test_zip_bundles_backend_but_never_training(tmp_path):
    done = subprocess.run(
        [sys.executable, "build_addon.py", "--out", str(tmp_path), "--lean"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    import zipfile

    extension, legacy = (Path(p) for p in done.stdout.split())
    names = zipfile.ZipFile(extension).namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "backend/library/index.py" in names
    assert "rfit/__init__.py" in zipfile.ZipFile(legacy).namelist()
    for archive in (extension, legacy):
        listing = zipfile.ZipFile(archive).namelist()
        assert not [n for n in listing if "training/" in n or "__pycache__" in n or n.endswith(".pyc")]


BPY_42 = ROOT / ".venv-bpy42" / "bin" / "python"


def blender_python(wheel: str, require) -> str:
    """The interpreter with that bpy wheel: this environment (5.0.1), or the
    4.2 LTS environment .ci/run makes (python3 -m venv .venv-bpy42 && pip install 'bpy==4.2.*')."""
    if wheel == "5.0":
        require(importlib.util.find_spec("bpy") is not None, "the bpy wheel", "pip install -e '.[bpy]'")
        return sys.executable
    require(
        BPY_42.exists(),
        f"the bpy 4.2 LTS wheel in {BPY_42.parent.parent}",
        "python3 -m venv .venv-bpy42 && .venv-bpy42/bin/pip install 'bpy==4.2.*' (as .ci/run does)",
    )
    return str(BPY_42)


@pytest.mark.parametrize("wheel", ["5.0", "4.2"])
def test_addon_headless(tmp_path, wheel, require):
    python = blender_python(wheel, require)
    library = tmp_path / "library"
    for category in ("chair", "table", "storage"):
        for i in range(3):
            library.mkdir(exist_ok=True)
            shutil.copy(DEMO / "library" / category / f"{category}_{i:02d}.glb", library / f"{category}_{i}.glb")
    tiny_checkpoint(tmp_path / "model.pt")
    built = subprocess.run(
        [sys.executable, "build_addon.py", "--out", str(tmp_path / "dist"), "--lean"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    zip_path = built.stdout.split()[0]
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RFIT_BACKEND_PYTHON": sys.executable, "PYTHONPATH": ""}
    done = subprocess.run(
        [
            python,
            str(ROOT / "tests" / "blender" / "addon_headless.py"),
            zip_path,
            str(library),
            str(tmp_path / "model.pt"),
            str(DEMO / "targets" / "chair_full.npy"),
            str(DEMO / "targets" / "chair.png"),
            str(tmp_path / "facts.json"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert "/extensions/user_default/rfit/" in facts["bundled_backend"]
    assert facts["parts"] >= 2 and facts["worker_stopped"]


def test_match_rating_says_what_the_chamfer_means():
    from blender_addon import quality

    # chamfer x100 is a mean squared distance at box diagonal 1: 0.16 -> off by 4% of the size
    assert quality.typical_distance(0.16) == pytest.approx(0.04)
    assert [quality.rating(c) for c in (0.05, 0.16, 0.3, 0.36, 0.4, 2.0, None)] == [
        "close",
        "close",
        "fair",
        "fair",
        "poor",
        "poor",
        "unmeasured",
    ]
    assert quality.describe(0.09) == "close (off by ~3% of its size)"
    assert quality.no_close_match([2.0, 5.0]) and not quality.no_close_match([2.0, 0.1])
    assert not quality.no_close_match([None, None])  # image fits are not measured: no verdict


def test_backend_failure_names_the_missing_package():
    from blender_addon.client import explain

    traceback = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "ModuleNotFoundError: No module named 'torch'",
    ]
    text = explain(traceback, "/venv/bin/python")
    assert "/venv/bin/python has no 'torch' package" in text and "pip install" in text
    assert explain(["", "RuntimeError: CUDA broke"], "p") == "RuntimeError: CUDA broke"
