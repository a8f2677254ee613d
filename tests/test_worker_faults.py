"""The worker survives any frame (issue 18): bad requests get an error answer and the next one is
served, a broken stream ends the worker cleanly, cancel stops work between batches.

Most cases drive ``backend.worker.Worker`` in this process over in-memory streams or pipes; the
abort and closed-stdout cases run ``python -m backend serve`` as the add-on does.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import chair_parts, tiny_checkpoint, write_scene

from backend.library import build_index
from backend.protocol import MAGIC, encode, read_message, request
from backend.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


def frame(header: dict | bytes, *payloads: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + b"".join(payloads)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def answers(stream: bytes) -> list:
    out, source = [], io.BytesIO(stream)
    while (message := read_message(source)) is not None:
        out.append(message)
    return out


def serve_bytes(data: bytes) -> list:
    outbox = io.BytesIO()
    assert Worker(io.BytesIO(data), outbox).run() == 0  # returns: never waits forever
    return answers(outbox.getvalue())


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("worker-faults")
    for i in range(3):
        write_scene(chair_parts(screws=i), folder / "library" / f"chair{i}.glb")
    build_index(folder / "library", folder / "index")
    return folder / "index"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("worker-model") / "model.pt")


def head(kind: str, request_id=1, **fields) -> dict:
    return {"protocol": 1, "id": request_id, "type": kind, **fields}


def bad_frames(index: Path) -> list[tuple[bytes, int, str]]:
    """(frame, id of the error answer, words of its message)."""
    deep = b'{"protocol": 1, "id": 7, "type": "hello", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    huge = np.lib.format.header_data_from_array_1_0(np.zeros((1, 3)))
    huge["shape"] = (10**11, 3)
    lie = io.BytesIO()
    np.lib.format.write_array_header_1_0(lie, huge)
    lie = lie.getvalue() + b"\0" * (200 - len(lie.getvalue()))
    pickled = npy(np.array([{"a": 1}], dtype=object))
    strings = npy(np.array([["a", "b", "c"]] * 100))
    good = npy(np.zeros((100, 3)))
    entry = lambda name, data: {"name": name, "nbytes": len(data)}  # noqa: E731
    return [
        (frame(head("fit", 1, index=str(index), arrays=5)), 1, "'arrays' must be a list"),
        (frame(head("fit", 2, index=str(index), arrays=[5])), 2, "each 'arrays' entry must be an object"),
        (frame(head("fit", 3, index=str(index), arrays=[{"name": "points", "nbytes": None}])), 3, "invalid size"),
        (frame(head("cancel", 4, target=None)), 4, "'target' must be the id of a request"),
        (frame(deep), -1, "header"),
        (frame(head("fit", 6, index=str(index), arrays=[entry("points", lie)]), lie), 6, "declares shape"),
        (frame(head("hello", [1, 2])), -1, "'id' must be an integer"),
        (frame(b'{"protocol": 1, "id": NaN, "type": "hello"}'), -1, "'id' must be an integer"),
        (frame(head("explode", 9)), 9, "unknown message type 'explode'"),
        (frame(head("result", 10)), 10, "'result' is not a request type"),
        (frame(head("fit", 11, index=str(index), arrays=[entry("points", pickled)]), pickled), 11, "not a plain .npy"),
        (frame(head("fit", 12, index=str(index), options={"top_k": 0})), 12, "'top_k' must be an integer from 1"),
        (frame(head("fit", 13, index=str(index), options={"top_k": True})), 13, "'top_k' must be an integer"),
        (frame(head("fit", 14, index=str(index), options={"speed": 3})), 14, "unknown option"),
        (frame(head("fit", 25, index=str(index), options={"headings": "north"})), 25, "'auto' or 'fixed'"),
        (frame(head("fit", 26, index=str(index), options={"viewpoint": [0, 1]})), 26, "scanner's direction"),
        (frame(head("fit", 27, index=str(index), options={"size_weight": -1})), 27, "'size_weight' must be a number"),
        (frame(head("keep_connected", 28, index=str(index), source_index=0, locked=[], yaw="x")), 28, "'yaw' must be"),
        (frame(head("part_meshes", 15, index=str(index), source_index=-1)), 15, "'source_index' must be"),
        (frame(head("part_meshes", 16, index=str(index), source_index=99)), 16, "out of range: the index has 3"),
        (frame(head("fit", 17, index=str(index), arrays=[entry("points", strings)]), strings), 17, "must be numbers"),
        (frame(head("index_library", 18, library="/x", index="/y", jobs="2")), 18, "'jobs' must be an integer"),
        (frame(head("index_library", 19, library=str(index), index="/y", options={"max_parts": 0})), 19, "max_parts"),
        (frame(head("hello", 20, protocol=99)), 20, "do not match"),
        (frame(b"{not json"), -1, "header is not JSON"),
        (frame(head("part_meshes", 22, source_index=0)), 22, "needs index"),
        (frame(head("refit", 23, index=str(index), source_index=0, locked=[1, 2])), 23, "'locked' must be a list"),
        (
            frame(head("fit", 24, index=str(index), arrays=[entry("points", good), entry("points", good)]), good, good),
            24,
            "array name 'points' must be a new string",
        ),
    ]


def test_every_bad_frame_gets_an_answer_and_the_next_request_is_served(index):
    cases = bad_frames(index)
    replies = serve_bytes(b"".join(f for f, _, _ in cases) + encode(request("hello", 99)))
    errors = [r for r in replies if r.type == "error"]
    assert len(errors) == len(cases), [e["message"] for e in errors]
    for _, request_id, words in cases:  # answers come from two threads: matched by id, not order
        match = next((e for e in errors if e.id == request_id and words in e["message"]), None)
        assert match is not None, (request_id, words, [e["message"] for e in errors if e.id == request_id])
        errors.remove(match)
        assert not match.get("fatal") and "Traceback" not in match["message"]
    assert replies[-1].type == "result" and replies[-1].id == 99 and replies[-1]["protocol"] == 1


@pytest.mark.parametrize(
    "stream, words",
    [
        (encode(request("hello", 1))[:-3], "stream closed in the middle"),  # stdin closed mid-request
        (b"GET / HTTP/1.1\r\n\r\n", "not a protocol frame"),
        (MAGIC + struct.pack("<I", 1 << 30), "larger than allowed"),
        (frame(head("fit", 1, index="/x", arrays=[{"name": "points", "nbytes": 1 << 20}]), b"short"), "closed"),
    ],
)
def test_a_broken_stream_ends_the_worker_cleanly(stream, words):
    after = b"" if words != "not a protocol frame" else encode(request("hello", 6))  # nothing after a close
    replies = serve_bytes(encode(request("hello", 5)) + stream + after)
    assert [r.id for r in replies if r.type == "result"] == [5]  # and nothing after the break is served
    fatal = [r for r in replies if r.type == "error"]
    assert len(fatal) == 1 and fatal[0].get("fatal") and words in fatal[0]["message"]


class Sink:
    """An outbox that keeps nothing, so memory measured is the worker's own."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def test_two_hundred_requests_without_memory_growth(index):
    requests = b"".join(
        encode(request("part_meshes", i, index=str(index), source_index=i % 3))
        + frame(head("fit", 10_000 + i, index=str(index), arrays=5))
        for i in range(200)
    )
    warm = b"".join(encode(request("part_meshes", i, index=str(index), source_index=i % 3)) for i in range(20))
    Worker(io.BytesIO(warm), Sink()).run()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        Worker(io.BytesIO(requests), Sink()).run()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2 << 20, f"{grown / 2**20:.1f} MiB kept after 400 requests"


class PipeWorker:
    """A worker in a thread of this process, over pipes, as the add-on talks to it."""

    def __init__(self):
        inbox_r, self.inbox_w = os.pipe()
        self.outbox_r, outbox_w = os.pipe()
        self.worker = Worker(os.fdopen(inbox_r, "rb"), os.fdopen(outbox_w, "wb"))
        self.reader = os.fdopen(self.outbox_r, "rb")
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()

    def send(self, message) -> None:
        os.write(self.inbox_w, encode(message))

    def until(self, test, limit: int = 10_000) -> list:
        seen = []
        for _ in range(limit):
            message = read_message(self.reader)
            seen.append(message)
            if test(message):
                return seen
        raise AssertionError("no such answer")

    def close(self) -> None:
        os.close(self.inbox_w)
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_cancel_stops_an_indexing_run_between_models(tmp_path):
    for i in range(12):
        write_scene(chair_parts(screws=i, slats=i % 3), tmp_path / "library" / f"c{i:02d}.glb")
    worker = PipeWorker()
    try:
        worker.send(request("index_library", 1, library=str(tmp_path / "library"), index=str(tmp_path / "index")))
        worker.until(lambda m: m.type == "progress")
        worker.send(request("cancel", 2, target=1))
        seen = worker.until(lambda m: m.id == 1 and m.type != "progress")
        assert seen[-1].type == "error" and seen[-1].get("cancelled")
        done = [m["done"] for m in seen if m.type == "progress"]
        assert max(done, default=1) < 12
    finally:
        worker.close()


def test_cancel_stops_a_fit_between_refinement_steps(index, checkpoint):
    worker = PipeWorker()
    points = np.random.default_rng(0).normal(size=(2000, 3)) * [0.25, 0.25, 0.45] + [0, 0, 0.45]
    try:
        worker.send(request("fit", 1, {"points": points}, index=str(index), checkpoint=str(checkpoint), meshes_for=[]))
        early = worker.until(lambda m: m.type == "progress" and "refining" in m["text"])
        worker.send(request("cancel", 2, target=1))
        seen = early + worker.until(lambda m: m.id == 1 and m.type != "progress")
        assert seen[-1].type == "error" and seen[-1].get("cancelled")
        assert not [m for m in seen if m.type == "progress" and m["text"] in ("fitted", "done")]
    finally:
        worker.close()


def serve_process() -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "backend", "serve"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_the_worker_process_never_aborts(index, tmp_path):
    """Ids that are lists or NaN, deep nesting, an index run with a pool, then stdin closed: a clean exit."""
    for i in range(4):
        write_scene(chair_parts(slats=i + 1), tmp_path / "library" / f"c{i}.glb")
    process = serve_process()
    try:
        for raw, _, _ in bad_frames(index)[4:8]:
            process.stdin.write(raw)
        process.stdin.write(
            encode(request("index_library", 1, library=str(tmp_path / "library"), index=str(tmp_path / "i"), jobs=2))
        )
        process.stdin.flush()
        while (message := read_message(process.stdout)).id != 1 or message.type == "progress":
            pass
        assert message.type == "result" and len(message["added"]) == 4  # a pool beside the reader thread
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert b"Fatal Python error" not in process.stderr.read()


def test_the_worker_ends_cleanly_when_its_reader_goes_away():
    process = serve_process()
    try:
        process.stdout.close()  # Blender stopped reading
        process.stdin.write(encode(request("hello", 1)) + encode(request("hello", 2)))
        process.stdin.flush()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert b"Fatal Python error" not in process.stderr.read()
