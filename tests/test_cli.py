import json
import subprocess
import sys
from pathlib import Path

from helpers import chair_parts, write_scene

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "backend", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_index_then_info(tmp_path):
    library = tmp_path / "lib"
    write_scene(chair_parts(), library / "a.glb")
    write_scene(chair_parts(screws=4), library / "b.glb")
    (library / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n")
    out = tmp_path / "index"
    done = run("index", str(library), "--out", str(out), "--max-parts", "4", "--jobs", "1")
    assert done.returncode == 0, done.stderr
    assert "2 added" in done.stdout and "skipped broken.off" in done.stdout
    assert done.stderr == ""  # not a terminal: no progress bar
    info = run("info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert [s["path"] for s in data["sources"]] == ["a.glb", "b.glb"]
    assert all(s["n_parts"] == 4 and s["n_joints"] >= 3 for s in data["sources"])
    assert [s["path"] for s in data["skipped"]] == ["broken.off"]
    assert data["options"]["max_parts"] == 4
    again = run("index", str(library), "--out", str(out), "--json")
    assert json.loads(again.stdout)["unchanged"] == ["a.glb", "b.glb"]


def test_errors_are_readable(tmp_path):
    done = run("info", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "no library index" in done.stderr and "Traceback" not in done.stderr
    done = run("index", str(tmp_path / "missing"), "--out", str(tmp_path / "i"))
    assert done.returncode == 2 and "library folder not found" in done.stderr
