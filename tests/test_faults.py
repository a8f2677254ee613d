"""Bad input and faults against `index`, `info` and `fit`, as a careless or unlucky user meets them (issue 18).

Each case asserts the one-line message, the exit status and that the user's files and the
previous index are intact. The commands run in this process (``backend.cli.main``); only the
kill cases start processes of their own.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import chair_parts, tiny_checkpoint, write_scene
from PIL import Image

import backend.library.index as index_module
from backend.cli import main
from backend.inputs import InputError, image_array, read_image
from backend.library import build_index, load_index

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *args) -> tuple[int, str, str]:
    if args[0] == "index" and "--jobs" not in args:
        args = (*args, "--jobs", "1")  # in this process: a pool's start-up is the slow part here
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # a usage error, from the argument parser
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def library(tmp_path) -> Path:
    root = tmp_path / "library"
    write_scene(chair_parts(), root / "plain.glb")
    write_scene(chair_parts(screws=4), root / "screwed.glb")
    write_scene(chair_parts(arms=True), root / "arms.glb")
    return root


@pytest.fixture
def index(library, tmp_path) -> Path:
    out = tmp_path / "index"
    build_index(library, out)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture
def no_fit(monkeypatch):
    """Fails the test if the model or the library's codes would load (long work)."""
    from backend.fitting import Fitter

    def refuse(*args, **kwargs):
        raise AssertionError("the fit started before its input was checked")

    monkeypatch.setattr(Fitter, "open", refuse)


# -- data loss ----------------------------------------------------------------------------------


def test_out_folder_of_the_users_is_refused_and_kept(capsys, library, tmp_path):
    out = tmp_path / "thesis"
    (out / "sources").mkdir(parents=True)
    (out / "sources" / "thesis.tex").write_text("chapter 1")
    (out / "sources" / "data.csv").write_text("1,2,3")
    (out / "sources" / "figures").mkdir()
    before = snapshot(out)
    code, out_text, err = run_cli(capsys, "index", library, "--out", out)
    assert code == 2
    one_line_error(err, str(out), "is not a library index", "sources")
    assert snapshot(out) == before and (out / "sources" / "figures").is_dir()


def test_out_equal_to_or_inside_the_library_is_refused(capsys, tmp_path):
    library = tmp_path / "lib"
    write_scene(chair_parts(), library / "sources" / "a.glb")
    write_scene(chair_parts(screws=2), library / "sources" / "b.glb")
    before = snapshot(library)
    code, _, err = run_cli(capsys, "index", library, "--out", library)
    assert code == 2
    one_line_error(err, "library folder itself")
    code, _, err = run_cli(capsys, "index", library, "--out", library / "sources")
    assert code == 2
    one_line_error(err, "folder of models inside the library")
    assert snapshot(library) == before
    code, out, _ = run_cli(capsys, "index", library, "--out", library / ".index")  # a folder of its own is fine
    assert (
        code == 0
        and "2 added" in out
        and snapshot(library / "sources") == {k.removeprefix("sources/"): v for k, v in before.items()}
    )


def test_fit_never_deletes_a_users_npz_in_the_index(checkpoint, index):
    from backend.fitting import Fitter

    np.savez(index / "model-backup.npz", weights=np.arange(5))  # the user's, named like a cache
    Fitter.open(checkpoint, index)  # writes the codes cache
    cache = next(p for p in index.glob("model-*.npz") if p.name != "model-backup.npz")
    shutil.copy(cache, index / "model-0000000000000000.npz")  # a renamed copy of a cache: the user's too
    with np.load(cache) as data:  # a stale cache of another checkpoint, as the fitter writes them
        arrays = {k: data[k] for k in data.files}
    np.savez(index / "model-ffffffffffffffff.npz", **{**arrays, "name": "model-ffffffffffffffff.npz"})
    cache.unlink()
    Fitter.open(checkpoint, index)  # rebuilds its cache, clearing stale caches of its own only
    names = {p.name for p in index.glob("model-*.npz")}
    assert names == {"model-backup.npz", "model-0000000000000000.npz", cache.name}
    assert np.load(index / "model-backup.npz")["weights"].tolist() == [0, 1, 2, 3, 4]


def test_only_files_the_manifest_named_are_removed(library, index):
    (index / "sources" / "notes.txt").write_text("mine")
    np.savez(index / "sources" / "0123456789abcdef0123-000000000000.npz", x=np.zeros(2))  # looks like a source
    old = {r["path"]: r["arrays"] for r in json.loads((index / "manifest.json").read_text())["sources"]}
    write_scene(chair_parts(slats=3), library / "plain.glb")  # changed: its old source file goes
    report = build_index(library, index)
    assert report.updated == ["plain.glb"]
    assert not (index / old["plain.glb"]).exists() and (index / old["arms.glb"]).exists()
    assert (index / "sources" / "notes.txt").read_text() == "mine"
    assert (index / "sources" / "0123456789abcdef0123-000000000000.npz").exists()


# -- stuck states -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process tables from /proc (Linux)")
def test_sigkill_of_the_indexer_leaves_no_workers_and_no_lock(library, tmp_path):
    for i in range(40):
        write_scene(chair_parts(screws=8 + i % 7, slats=i % 4), library / f"more{i:02d}.glb")
    out = tmp_path / "index"
    script = "import sys; from backend.library import build_index; build_index(sys.argv[1], sys.argv[2], jobs=2)"
    process = subprocess.Popen([sys.executable, "-c", script, str(library), str(out)], cwd=ROOT)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:  # the pool's two workers are at work
        time.sleep(0.02)
        workers = _children(process.pid)
        assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(p) for p in workers):
        time.sleep(0.1)
    assert workers and all(_gone(p) for p in workers), "pool workers outlived the killed indexer"
    report = build_index(library, out)  # not "another indexing run is writing ..."
    assert len(load_index(out)) == 43 and not report.skipped


def test_a_stale_lock_of_a_dead_run_is_taken_over(index, library):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": ""})
    # A leftover process (as a forked worker of a killed run was) keeps the lock itself.
    leftover = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.seek(0); f.truncate(); f.write(sys.argv[2]); f.flush(); print('held', flush=True); time.sleep(60)",
            str(index / ".lock"),
            holder,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert leftover.stdout.readline().strip() == "held"
        report = build_index(library, index)
        assert sorted(report.unchanged) == ["arms.glb", "plain.glb", "screwed.glb"]
        alive = json.dumps({"pid": leftover.pid, "host": socket.gethostname(), "started": ""})
        with index_module._exclusive(index):  # a live holder is respected, and named
            (index / ".lock").write_text(alive)
            with pytest.raises(index_module.LibraryIndexError, match=f"pid {leftover.pid}"):
                build_index(library, index)
    finally:
        leftover.kill()
        leftover.wait()


def crash_on_killer(args: tuple) -> dict:
    """Pool task for the test below: the process reading 'killer.glb' dies as under the OOM killer."""
    if args[0].path == "killer.glb":
        os.kill(os.getpid(), signal.SIGKILL)
    return index_module.index_entry(*args)


def test_a_killed_pool_worker_skips_its_file_and_the_run_goes_on(tmp_path, monkeypatch):
    library = tmp_path / "library"
    for name in ("a.glb", "killer.glb", "later.glb"):
        write_scene(chair_parts(slats=len(name)), library / name)
    monkeypatch.setattr(index_module, "_index_entry_star", crash_on_killer)
    out = tmp_path / "index"
    report = build_index(library, out, jobs=2)
    assert [(s.path, "died while reading" in s.reason) for s in report.skipped] == [("killer.glb", True)]
    assert sorted(report.added) == ["a.glb", "later.glb"]
    again = build_index(library, out, jobs=2)  # recorded: the rerun does not die on it again
    assert len(again.unchanged) == 2 and [s.path for s in again.skipped] == ["killer.glb"]


def test_progress_is_committed_in_batches(library, tmp_path, monkeypatch):
    for i in range(5):
        write_scene(chair_parts(screws=i + 1, slats=2), library / f"extra{i}.glb")
    monkeypatch.setattr(index_module, "COMMIT_EVERY", 3)
    original, calls = index_module.source_from_entry, []

    def interrupted(entry, *args):
        calls.append(entry.path)
        if len(calls) == 7:
            raise KeyboardInterrupt  # the user pressed Ctrl-C, or the machine went down
        return original(entry, *args)

    monkeypatch.setattr(index_module, "source_from_entry", interrupted)
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build_index(library, out)
    kept = load_index(out)
    assert len(kept) == 6
    for i in range(len(kept)):
        kept.load_source(i)
    calls.clear()
    monkeypatch.setattr(index_module, "source_from_entry", lambda e, *a: calls.append(e.path) or original(e, *a))
    report = build_index(library, out)
    assert len(calls) == 2 and len(report.unchanged) == 6 and len(load_index(out)) == 8


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_a_damaged_source_file_is_reported_and_rebuilt(damage, checkpoint, library, index, capsys, no_fit):
    rows = json.loads((index / "manifest.json").read_text())["sources"]
    victim = index / rows[1]["arrays"]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        victim.write_bytes(os.urandom(len(data)))
    else:
        victim.write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    with pytest.raises(index_module.LibraryIndexError, match="damaged.*run: python -m backend index"):
        load_index(index).load_source(1)
    report = build_index(library, index)
    assert report.repaired == [rows[1]["path"]] and len(report.unchanged) == 2
    fresh = load_index(index)
    for i in range(len(fresh)):
        fresh.load_source(i)


def test_fit_on_a_damaged_source_says_run_index(checkpoint, index, capsys):
    victim = index / json.loads((index / "manifest.json").read_text())["sources"][0]["arrays"]
    victim.write_bytes(b"PK\x03\x04 not really")
    target = index.parent / "t.npy"
    np.save(target, np.random.default_rng(0).random((300, 3)))
    code, _, err = run_cli(capsys, "fit", "--index", index, "--points", target, "--checkpoint", checkpoint)
    assert code == 2
    one_line_error(err, str(victim), "damaged", "run: python -m backend index")


def test_a_damaged_codes_cache_is_rebuilt(checkpoint, index):
    from backend.fitting import Fitter

    first = Fitter.open(checkpoint, index)
    cache = next(index.glob("model-*.npz"))
    cache.write_bytes(cache.read_bytes()[:1000])
    second = Fitter.open(checkpoint, index)
    torch.testing.assert_close(second.codes["embedding"], first.codes["embedding"])
    with np.load(cache) as data:
        assert "embedding" in data.files  # written again, whole


def test_a_damaged_manifest_says_how_to_start_over(capsys, library, index):
    (index / "manifest.json").write_text('{"format": "rfit-library-index", "sour')
    for args in (("index", library, "--out", index), ("info", index)):
        code, _, err = run_cli(capsys, *args)
        assert code == 2
        one_line_error(err, "manifest.json", "delete the folder or run", "--rebuild")
    code, out, _ = run_cli(capsys, "index", library, "--out", index, "--rebuild")
    assert code == 0 and "3 added" in out and len(load_index(index)) == 3


def test_rebuild_rebuilds_every_source_and_removes_the_old_files(library, index):
    before = {r["arrays"] for r in json.loads((index / "manifest.json").read_text())["sources"]}
    report = build_index(library, index, rebuild=True)
    assert len(report.added) == 3 and not report.unchanged
    after = {r["arrays"] for r in json.loads((index / "manifest.json").read_text())["sources"]}
    assert after == before and all((index / a).exists() for a in after)  # same content, same names


def test_a_moved_library_is_re_pointed(capsys, checkpoint, library, index, tmp_path, no_fit):
    moved = tmp_path / "moved-library"
    os.rename(library, moved)
    target = tmp_path / "t.npy"
    np.save(target, np.random.default_rng(0).random((300, 3)))
    code, _, err = run_cli(
        capsys, "fit", "--index", index, "--points", target, "--checkpoint", checkpoint, "--export", tmp_path / "o.glb"
    )
    assert code == 2
    one_line_error(err, str(library), "is gone", "python -m backend index NEW_LIBRARY_FOLDER --out")
    code, out, _ = run_cli(capsys, "index", moved, "--out", index)  # the old folder is gone: adopted
    assert code == 0 and "3 unchanged" in out and f"library moved from {library}" in out
    assert load_index(index).library_root == moved.resolve()
    shutil.copytree(moved, library)  # two copies: re-pointing must now be asked for
    code, _, err = run_cli(capsys, "index", library, "--out", index)
    assert code == 2
    one_line_error(err, "--relocate")
    code, out, _ = run_cli(capsys, "index", library, "--out", index, "--relocate")
    assert code == 0 and "3 unchanged" in out and load_index(index).library_root == library.resolve()


def test_an_empty_or_missing_library_writes_nothing(capsys, tmp_path, index, library):
    empty = tmp_path / "empty"
    (empty / "docs").mkdir(parents=True)
    (empty / "docs" / "readme.txt").write_text("no models here")
    code, _, err = run_cli(capsys, "index", empty, "--out", tmp_path / "new")
    assert code == 2 and not (tmp_path / "new").exists()
    one_line_error(err, "no model files found", "nothing indexed")
    code, _, err = run_cli(capsys, "index", tmp_path / "missing", "--out", tmp_path / "new")
    assert code == 2 and not (tmp_path / "new").exists()
    one_line_error(err, "library folder not found")
    # a library that is suddenly empty (an unmounted disk) does not empty its index
    before = snapshot(index)
    for model in library.iterdir():
        model.unlink()
    code, _, err = run_cli(capsys, "index", library, "--out", index)
    assert code == 2 and snapshot(index) == before
    one_line_error(err, "no model files found", "the index is unchanged")


def test_unclear_skips_are_explained(library, tmp_path):
    (library / "loop1.glb").symlink_to(library / "loop2.glb")
    (library / "loop2.glb").symlink_to(library / "loop1.glb")
    (library / "dangling.glb").symlink_to(tmp_path / "nowhere.glb")
    (library / "badface.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    shutil.copy(library / "plain.glb", os.fsencode(library) + b"/caf\xe9.glb")  # not UTF-8
    import trimesh

    files = trimesh.Scene([trimesh.creation.box()]).export(file_type="gltf")
    gltf = json.loads(files["model.gltf"])
    os.mkfifo(library / gltf["buffers"][0]["uri"])  # reading it would block forever
    (library / "fifo.gltf").write_text(json.dumps(gltf))
    report = build_index(library, tmp_path / "index")
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons["loop1.glb"] == reasons["loop2.glb"] == "symbolic link loop"
    assert "broken symbolic link" in reasons["dangling.glb"]
    assert reasons["badface.obj"] == "OBJ file has a face naming a vertex it does not have"
    assert "not a regular file" in reasons["fifo.gltf"]
    assert "caf\udce9.glb" in report.added


def test_info_prints_names_that_are_not_utf8(capsys, library, tmp_path):
    shutil.copy(library / "plain.glb", os.fsencode(library) + b"/caf\xe9.glb")
    build_index(library, tmp_path / "index")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as a terminal's
    real, sys.stdout = sys.stdout, stdout
    try:
        assert main(["info", str(tmp_path / "index")]) == 0
    finally:
        sys.stdout = real
    stdout.seek(0)
    assert "\n  caf\ufffd.glb: " in stdout.read()


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--samples", "0"),
        ("--samples", "1e8"),
        ("--samples", "100000000"),
        ("--max-parts", "0"),
        ("--max-parts", "-1"),
        ("--contact-tolerance", "nan"),
        ("--contact-tolerance", "inf"),
        ("--min-part-fraction", "-1"),
        ("--jobs", "0"),
    ],
)
def test_invalid_index_options_are_refused_and_not_saved(capsys, library, index, flag, value):
    before = snapshot(index)
    code, _, err = run_cli(capsys, "index", library, "--out", index, flag, value)
    assert code == 2 and snapshot(index) == before
    one_line_error(err, f"argument {flag}: must be", repr(value))


def test_options_saved_invalid_by_an_old_version_are_explained(capsys, library, index):
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["options"]["max_parts"] = 0
    (index / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "index", library, "--out", index)
    assert code == 2
    one_line_error(err, "invalid options", "max_parts must be an integer from 1 to 64", "--rebuild")
    code, out, _ = run_cli(capsys, "index", library, "--out", index, "--max-parts", "8")
    assert code == 0 and "3 updated" in out and load_index(index).options.max_parts == 8


@pytest.mark.parametrize(
    "flag, value",
    [("--top-k", "0"), ("--top-k", "-1"), ("--top-k", "101"), ("--yaw-search", "1000"), ("--yaw-search", "0")],
)
def test_invalid_fit_options_are_refused(capsys, index, tmp_path, flag, value, no_fit):
    code, _, err = run_cli(capsys, "fit", "--index", index, "--points", tmp_path / "t.npy", flag, value)
    assert code == 2
    one_line_error(err, f"argument {flag}: must be an integer from", repr(value))


def test_a_scan_viewpoint_reaches_the_fit_and_a_null_one_is_refused(capsys, index, checkpoint, tmp_path, monkeypatch):
    from backend.fitting import Fitter

    points = tmp_path / "scan.npy"
    np.save(points, np.random.default_rng(0).random((500, 3)))
    code, _, err = run_cli(capsys, "fit", "--index", index, "--points", points, "--viewpoint", "0", "0", "0")
    assert code == 2
    one_line_error(err, "--viewpoint 0 0 0 has no direction")
    seen = {}

    def capture(self, target, options, progress=None):
        seen["viewpoint"] = options.viewpoint
        raise ValueError("captured")

    monkeypatch.setattr(Fitter, "fit_points", capture)
    args = ("fit", "--index", index, "--points", points, "--checkpoint", checkpoint, "--viewpoint", "0.4", "-1", "0.5")
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "captured" in err
    assert seen["viewpoint"] == (0.4, -1.0, 0.5)


# -- fit inputs ---------------------------------------------------------------------------------


def npy_with_header(path: Path, descr: str, shape: tuple, payload: bytes = b"") -> Path:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload)
    return path


def bad_points(tmp_path: Path) -> list[tuple[Path, str]]:
    zero = tmp_path / "zero.npy"
    zero.write_bytes(b"")
    structured = tmp_path / "structured.npy"
    np.save(structured, np.zeros(100, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")]))
    huge = npy_with_header(tmp_path / "huge.npy", "<f8", (10**11, 3), b"\0" * 64)
    short = npy_with_header(tmp_path / "short.npy", "<f8", (1000, 3), b"\0" * 64)
    far = tmp_path / "far.npy"
    np.save(far, np.random.default_rng(0).random((300, 3)) * 1e39)
    text = tmp_path / "garbage.xyz"
    text.write_text("this is not\na point cloud\n")
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((300, 2)))
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    point = tmp_path / "point.npy"
    np.save(point, np.tile([1.0, 2.0, 3.0], (300, 1)))
    few = tmp_path / "few.xyz"
    np.savetxt(few, np.random.default_rng(0).random((10, 3)))
    return [
        (point, "no extent: every point is at the same place"),
        (few, "has 10 usable points"),
        (zero, "is empty"),
        (structured, "not a plain .npy array (dtype"),
        (huge, "declares 100000000000 points"),
        (short, "truncated or damaged"),
        (far, "cannot be fitted (check the units)"),
        (text, "cannot read points"),
        (flat, "points must be N x 3"),
        (folder, "not a regular file"),
        (tmp_path / "missing.npy", "points file not found"),
    ]


def test_bad_point_files_get_one_line(capsys, index, checkpoint, tmp_path, no_fit):
    for path, problem in bad_points(tmp_path):
        code, _, err = run_cli(capsys, "fit", "--index", index, "--points", path, "--checkpoint", checkpoint)
        assert code == 2, path
        one_line_error(err, str(path), problem)


def test_bad_checkpoints_get_one_line(capsys, index, tmp_path, no_fit):
    target = tmp_path / "t.npy"
    np.save(target, np.random.default_rng(0).random((300, 3)))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "rfit-checkpoint-1", "payload": Path("/etc")}, pickled)  # an object, not weights
    plain_pickle = tmp_path / "plain.pt"
    plain_pickle.write_bytes(b"\x80\x04K\x01.")
    cases = [
        (garbage, "not a PyTorch checkpoint"),
        (folder, "is not a file"),
        (pickled, "holds objects other than plain weights"),
        (plain_pickle, "not a PyTorch checkpoint"),
        (tmp_path / "missing.pt", "checkpoint not found"),
    ]
    for path, problem in cases:
        code, _, err = run_cli(capsys, "fit", "--index", index, "--points", target, "--checkpoint", path)
        assert code == 2, path
        one_line_error(err, str(path), problem)


def test_outputs_are_checked_before_the_fit(capsys, index, checkpoint, tmp_path, no_fit, monkeypatch):
    target = tmp_path / "t.npy"
    np.save(target, np.random.default_rng(0).random((300, 3)))
    (tmp_path / "a_file").write_text("x")
    cases = [
        ("--out", tmp_path, "is a folder"),
        ("--out", tmp_path / "a_file" / "out.json", "cannot write --out"),
        ("--out", tmp_path / "no" / "such" / "out.json", "cannot write --out"),
        ("--export", tmp_path, "is a folder"),
        ("--export", tmp_path / "fit.obj", "must end with .glb"),
        ("--export", tmp_path / "a_file" / "fit.glb", "cannot write --export"),
    ]
    base = ["fit", "--index", index, "--points", target, "--checkpoint", checkpoint]
    for flag, path, problem in cases:
        code, _, err = run_cli(capsys, *base, flag, path)
        assert code == 2, (flag, path)
        one_line_error(err, str(path), problem)
    assert (tmp_path / "a_file").read_text() == "x" and not (tmp_path / "fit.obj").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, *base, "--device", "cuda")
    assert code == 2
    one_line_error(err, "--device cuda", "no CUDA GPU")
    code, _, err = run_cli(capsys, *base, "--device", "tpu9")
    assert code == 2
    one_line_error(err, "--device tpu9")


# -- images -------------------------------------------------------------------------------------


def object_image(size=64) -> np.ndarray:
    """(size, size) grey levels: white, with a dark square in the middle."""
    grey = np.full((size, size), 255, np.uint8)
    grey[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 40
    return grey


def assert_shows_the_object(rgb: np.ndarray) -> None:
    """White background, dark square: the mode was read as what it shows."""
    grey = rgb[..., :3].astype(float).mean(axis=2)
    if rgb.shape[2] == 4:
        alpha = rgb[..., 3] / 255.0
        grey = grey * alpha + 255 * (1 - alpha)
    n = len(grey)
    assert grey[n // 2, n // 2] < 80 and grey[2, 2] > 230 and grey[n // 2, 2] > 230


def write_mode(path: Path, mode: str) -> Path:
    grey = object_image()
    if mode == "I;16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # a 16-bit grey PNG
    elif mode == "I":
        Image.fromarray(grey.astype(np.int32) * 257, mode="I").save(path)
    elif mode == "F":
        Image.fromarray(grey.astype(np.float32) / 255.0, mode="F").save(path)
    elif mode == "F255":
        Image.fromarray(grey.astype(np.float32), mode="F").save(path)
    elif mode == "P":
        Image.fromarray(grey).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif mode == "P+transparency":
        image = Image.fromarray(np.where(grey == 255, 0, 1).astype(np.uint8), mode="P")
        image.putpalette([0, 255, 0, 40, 40, 40])  # the background is green but transparent
        image.info["transparency"] = 0
        image.save(path, transparency=0)
    elif mode == "CMYK":
        Image.fromarray(grey).convert("CMYK").save(path)
    elif mode == "LA":
        alpha = np.where(grey == 255, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([np.zeros_like(grey), alpha], axis=2), mode="LA").save(path)  # black, cut out
    elif mode == "RGBA":
        alpha = np.where(grey == 255, 0, 255).astype(np.uint8)
        rgb = np.zeros((*grey.shape, 3), np.uint8)
        rgb[..., 1] = 255 * (grey == 255)  # green where transparent
        Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    elif mode == "1":
        Image.fromarray(grey > 128).save(path)
    else:
        Image.fromarray(grey).convert(mode).save(path)
    return path


@pytest.mark.parametrize(
    "mode, suffix",
    [
        ("I;16", ".png"),
        ("I", ".tif"),
        ("F", ".tif"),
        ("F255", ".tif"),
        ("P", ".png"),
        ("P+transparency", ".png"),
        ("CMYK", ".jpg"),
        ("LA", ".png"),
        ("RGBA", ".png"),
        ("1", ".png"),
        ("L", ".png"),
        ("RGB", ".jpg"),
    ],
)
def test_every_image_mode_reads_as_what_it_shows(tmp_path, mode, suffix):
    image = read_image(write_mode(tmp_path / f"image{suffix}", mode))
    assert image.dtype == np.uint8 and image.shape[:2] == (64, 64) and image.shape[2] in (3, 4)
    assert_shows_the_object(image)


@pytest.mark.parametrize(
    "array",
    [
        object_image(),
        object_image().astype(np.uint16) * 257,
        object_image().astype(np.float32) / 255.0,
        object_image().astype(np.float32),  # 0..255 stored as float
        np.dstack([object_image()] * 3),
        np.dstack([object_image()] * 3 + [np.full((64, 64), 255, np.uint8)]),
    ],
    ids=["grey", "uint16", "float01", "float255", "rgb", "rgba"],
)
def test_image_arrays_are_normalised_by_dtype(array):
    assert_shows_the_object(image_array(array))


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares a size and holds (almost) nothing: reading must stop at the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))
    return path


def test_bad_images_get_one_line(capsys, index, checkpoint, tmp_path, no_fit):
    transparent = tmp_path / "transparent.png"
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), mode="RGBA").save(transparent)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(blank)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = [
        (png_header(tmp_path / "bomb.png", 20000, 20000), "the limit is 64 megapixels"),
        (png_header(tmp_path / "large.png", 9500, 9500), "the limit is 64 megapixels"),
        (png_header(tmp_path / "wide.png", 16000, 5000), "16000 x 5000 pixels; the limit is 64 megapixels"),
        (transparent, "the image needs a plain background or transparency: no object found"),
        (blank, "the image needs a plain background or transparency: no object found"),
        (tiny, "1 x 1 pixels"),
        (text, "cannot read image"),
        (tmp_path / "missing.png", "image not found"),
    ]
    for path, problem in cases:
        code, _, err = run_cli(capsys, "fit", "--index", index, "--image", path, "--checkpoint", checkpoint)
        assert code == 2, path
        one_line_error(err, str(path), problem)


def test_a_large_image_is_reduced_on_reading(tmp_path):
    big = np.full((3000, 2000), 255, np.uint8)
    big[1000:2000, 500:1500] = 0
    Image.fromarray(big).save(tmp_path / "big.png")
    image = read_image(tmp_path / "big.png")
    assert image.shape[:2] == (1024, 683)
    assert image[512, 341, 0] < 50 and image[10, 10, 0] > 230


def test_image_arrays_with_bad_values_are_refused():
    for array, problem in [
        (np.full((64, 64, 3), np.nan, np.float32), "NaN"),
        (np.full((64, 64, 3), 300.0), "up to 300"),
        (np.zeros((64, 64, 3), np.int64), "int64 pixels"),
        (np.zeros((64, 64, 5), np.uint8), "H x W x 3"),
    ]:
        with pytest.raises(InputError, match=problem):
            image_array(array)
