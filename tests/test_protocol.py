"""The framed protocol and the worker process, driven as the add-on drives it."""

import io
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint

from backend.protocol import MAGIC, FrameError, ProtocolError, encode, read_message, request, response
from blender_addon.client import BackendClient, BackendUnavailable

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "backend" / "demo"


def test_round_trip_with_arrays():
    points = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    message = request(
        "fit", 7, {"points": points, "image": np.zeros((4, 4, 3), np.uint8)}, index="/x", options={"top_k": 3}
    )
    stream = io.BytesIO(encode(message) + encode(response("result", 7, ok=True)))
    first = read_message(stream)
    assert first.type == "fit" and first.id == 7 and first["options"] == {"top_k": 3}
    np.testing.assert_array_equal(first.arrays["points"], points)
    assert first.arrays["image"].dtype == np.uint8
    assert read_message(stream)["ok"] is True
    assert read_message(stream) is None


def test_malformed_frames_are_refused():
    with pytest.raises(ProtocolError, match="not a protocol frame"):
        read_message(io.BytesIO(b"hello world"))
    with pytest.raises(ProtocolError, match="larger than allowed"):
        read_message(io.BytesIO(MAGIC + struct.pack("<I", 1 << 30)))
    header = b'{"protocol": 99, "id": 1, "type": "hello"}'
    with pytest.raises(ProtocolError, match="do not match"):
        read_message(io.BytesIO(MAGIC + struct.pack("<I", len(header)) + header))
    # a pickled object array is never loaded
    evil = io.BytesIO()
    np.save(evil, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    header = b'{"protocol": 1, "id": 1, "type": "fit", "arrays": [{"name": "points", "nbytes": %d}]}' % len(
        evil.getvalue()
    )
    with pytest.raises(ProtocolError, match="plain .npy"):
        read_message(io.BytesIO(MAGIC + struct.pack("<I", len(header)) + header + evil.getvalue()))
    with pytest.raises(ProtocolError, match="needs"):
        request("index_library", 1, library="/x")
    with pytest.raises(EOFError):
        read_message(io.BytesIO(encode(request("hello", 1))[:-3]))


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("worker")
    for category in ("chair", "table"):
        (folder / "library").mkdir(exist_ok=True)
        for i in range(3):
            shutil.copy(
                DEMO / "library" / category / f"{category}_{i:02d}.glb", folder / "library" / f"{category}_{i}.glb"
            )
    tiny_checkpoint(folder / "model.pt")
    from backend.library import build_index

    build_index(folder / "library", folder / "index")
    client = BackendClient(sys.executable)
    yield client, folder
    client.shutdown()
    assert not client.alive


def test_hello_index_fit(worker):
    client, folder = worker
    hello = client.call("hello")
    assert (
        hello["protocol"] == 1
        and hello["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        and hello["torch"]
    )
    progress = []
    answer = client.wait(
        client.submit("index_library", library=str(folder / "library"), index=str(folder / "worker-index")),
        on_progress=progress.append,
    )
    assert answer.type == "result" and len(answer["added"]) == 6
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 6
    points = np.load(DEMO / "targets" / "chair_full.npy")
    fit = client.call(
        "fit",
        {"points": points},
        index=str(folder / "worker-index"),
        checkpoint=str(folder / "model.pt"),
        options={"top_k": 2},
        meshes_for=[0],
    )
    assert len(fit["candidates"]) == 2
    parts = fit["candidates"][0]["parts"]
    for candidate in fit["candidates"]:  # where the fit is poor, per part (backend/residuals.py)
        residuals = candidate["residuals"]
        assert len(residuals["parts_x100"]) == len(residuals["share"]) == len(candidate["parts"])
        assert sum(residuals["share"]) == pytest.approx(1.0) and min(residuals["parts_x100"]) >= 0
    assert fit.arrays["c0_part0_colour"].shape == (4,)  # the demo files carry materials
    thumbs = client.call(
        "fit",
        {"points": points},
        index=str(folder / "worker-index"),
        checkpoint=str(folder / "model.pt"),
        options={"top_k": 2},
        meshes_for=[],
        thumbnails=64,
    )
    for rank in range(2):
        thumb = thumbs.arrays[f"thumbnail{rank}"]
        assert thumb.shape == (64, 64, 3) and thumb.dtype == np.uint8
        assert (np.abs(thumb.astype(int) - 41).sum(axis=2) > 30).mean() > 0.05  # the object shows on the background
    # measuring boxes as the user left them (no refit): the part dragged off the scan is the worst
    boxes = np.array([p["fitted_box"] for p in sorted(parts, key=lambda p: p["index"])])
    boxes[0, 2] += 0.4 * np.linalg.norm(points.max(0) - points.min(0))
    measured = client.call(
        "residuals",
        {"points": points, "boxes": boxes},
        index=str(folder / "worker-index"),
        checkpoint=str(folder / "model.pt"),
        source_index=fit["candidates"][0]["source_index"],
        yaw=fit["candidates"][0]["yaw"],
    )
    assert int(np.argmax(measured["parts_x100"])) == 0, measured.header
    refused = client.wait(
        client.submit("residuals", {"points": points}, index=str(folder / "worker-index"), source_index=0)
    )
    assert refused.type == "error" and "'boxes'" in refused["message"]
    for k in range(len(parts)):
        assert fit.arrays[f"c0_part{k}_vertices"].shape[1] == 3
        assert fit.arrays[f"c0_part{k}_faces"].max() < len(fit.arrays[f"c0_part{k}_vertices"])


def test_errors_are_answers_and_the_worker_lives_on(worker):
    client, folder = worker
    bad = client.wait(
        client.submit(
            "fit",
            {"points": np.full((10, 3), np.nan)},
            index=str(folder / "index"),
            checkpoint=str(folder / "model.pt"),
        )
    )
    assert bad.type == "error" and "NaN" in bad["message"]
    missing = client.wait(client.submit("index_library", library=str(folder / "nowhere"), index=str(folder / "i2")))
    assert missing.type == "error" and "not found" in missing["message"]
    assert client.call("hello")["protocol"] == 1


def test_cancel_an_indexing_run(worker, tmp_path):
    client, folder = worker
    library = tmp_path / "big"
    library.mkdir()
    for i in range(40):
        shutil.copy(DEMO / "library" / "storage" / f"storage_{i % 20:02d}.glb", library / f"s{i}.glb")
    job = client.submit("index_library", library=str(library), index=str(tmp_path / "index"))
    client.submit("cancel", target=job)
    answer = client.wait(job)
    assert answer.type == "error" and answer.get("cancelled")
    from backend.library import load_index

    if (tmp_path / "index" / "manifest.json").exists():  # nothing half-written: what was committed loads
        index = load_index(tmp_path / "index")
        assert len(index) < 40
        for i in range(len(index)):
            index.load_source(i)


def test_a_dead_worker_is_restarted(worker):
    client, _ = worker
    client.process.kill()
    client.process.wait()
    assert not client.alive
    assert client.call("hello")["protocol"] == 1  # submit restarted it


def test_unconfigured_backend_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RFIT_BACKEND_PYTHON", raising=False)
    with pytest.raises(BackendUnavailable, match="no backend Python"):
        BackendClient(None)
    with pytest.raises(BackendUnavailable, match="not found"):
        BackendClient("/nonexistent/python")


def test_edit_requests(worker):
    client, folder = worker
    fit = client.call(
        "fit",
        {"points": np.load(DEMO / "targets" / "chair_full.npy")},
        index=str(folder / "index"),
        checkpoint=str(folder / "model.pt"),
        options={"top_k": 1},
        meshes_for=[],
    )
    best = fit["candidates"][0]
    boxes = np.array([p["fitted_box"] for p in best["parts"]])
    edited = boxes.copy()
    edited[0, :3] += 0.05
    locked = [True] + [False] * (len(boxes) - 1)
    kept = client.call(
        "keep_connected",
        {"boxes": edited, "reference": boxes},
        index=str(folder / "index"),
        source_index=best["source_index"],
        locked=locked,
        keep_symmetry=True,
        yaw=float(best["yaw"]),  # the boxes' centres are turned by the fit's heading
    )
    np.testing.assert_allclose(kept.arrays["boxes"][0], edited[0], atol=1e-9)
    assert kept["feasible"] and kept["message"] == "" and kept["conflicts"] == []
    size = np.linalg.norm(boxes[:, :3].max(0) - boxes[:, :3].min(0) + 2 * boxes[:, 3:].max(0))
    assert kept["max_gap"] < 1e-3 * size  # joints within 0.1% of the model's size (tests/test_editing.py)
    others = np.abs(kept.arrays["boxes"][1:] - boxes[1:]).max()
    assert others < 3 * 0.05  # the others follow a 5 cm move, they do not blow up
    refit = client.call(
        "refit",
        {"boxes": kept.arrays["boxes"], "points": np.load(DEMO / "targets" / "chair_full.npy")},
        index=str(folder / "index"),
        checkpoint=str(folder / "model.pt"),
        source_index=best["source_index"],
        locked=locked,
        options={"refine_steps": 20},
    )
    np.testing.assert_allclose(refit["candidates"][0]["parts"][0]["fitted_box"], edited[0], atol=1e-4)
    meshes = client.call("part_meshes", index=str(folder / "index"), source_index=best["source_index"])
    assert len([k for k in meshes.arrays if k.endswith("_vertices")]) == len(boxes)


def test_worker_exits_when_blender_goes_away():
    """Blender closing (the worker's stdin reaching its end) stops the worker."""
    client = BackendClient(sys.executable)
    assert client.call("hello")["protocol"] == 1
    client.process.stdin.close()
    assert client.process.wait(timeout=30) == 0


def test_every_fit_option_the_fitter_takes_passes_the_schema():
    """What FitOptions accepts, the worker's schema accepts too (the add-on can send a scan's viewpoint)."""
    from dataclasses import fields

    from backend.fitting import FitOptions
    from backend.protocol import validate_request

    defaults = {f.name: getattr(FitOptions(), f.name) for f in fields(FitOptions)}
    defaults["viewpoint"] = [0.0, -1.0, 0.3]
    for name, value in defaults.items():
        validate_request(request("fit", 1, index="/i", options={name: value}))  # raises FrameError when refused
    for viewpoint in (None, "auto"):
        validate_request(request("fit", 1, index="/i", options={"viewpoint": viewpoint}))
    for refused in ("behind", [0.0, 0.0, 0.0], [1.0, 2.0]):
        with pytest.raises(FrameError, match="viewpoint"):
            validate_request(request("fit", 1, index="/i", options={"viewpoint": refused}))
        with pytest.raises(FrameError, match="viewpoint"):
            validate_request(request("residuals", 1, index="/i", source_index=0, viewpoint=refused))
    validate_request(request("residuals", 1, index="/i", source_index=0, viewpoint=[0.3, -0.9, 0.3]))
