"""The backend worker: ``python -m backend serve``, driven over stdin/stdout.

One reader thread takes requests off stdin, checks each against the
protocol's schema (a bad one is answered with an error and the next one is
read; a broken stream ends the worker cleanly) and answers ``cancel`` at
once; the main thread runs requests one at a time and streams ``progress``
while it works, and a cancelled request stops at its next progress call.
Stray prints from libraries cannot corrupt the protocol: the process's own
stdout is moved to stderr, and frames go to a private copy of the original
stdout. What the worker reads it keeps: fitters per (checkpoint, index) and
the part meshes of recently used sources (``backend.export``'s cache); the
candidates' thumbnails come from the index (drawn once, at index time).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import numpy as np

from backend import __version__
from backend.protocol import (
    PROTOCOL_VERSION,
    FrameError,
    Message,
    ProtocolError,
    encode,
    read_message,
    response,
    validate_request,
)

MAX_FITTERS = 4


class Cancelled(Exception):
    """The add-on asked to stop the request being worked on."""


class Worker:
    def __init__(self, inbox: BinaryIO, outbox: BinaryIO):
        self.inbox = inbox
        self.outbox = outbox
        self.lock = threading.Lock()
        self.jobs: queue.Queue[Message | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.fitters: OrderedDict[tuple[str, str], tuple[object, object]] = OrderedDict()
        self.closed = False  # the reader of our frames went away

    # -- output ----------------------------------------------------------------------
    def send(self, message: Message) -> None:
        """Write a frame; once the other side has gone, every send is a no-op.

        Raises:
            ValueError: the message holds NaN or infinity (strict JSON); nothing was sent.
        """
        try:
            data = encode(message)
        except ValueError as error:
            raise ValueError(f"the {message.type} holds non-finite numbers (NaN or infinity): {error}") from error
        with self.lock:
            if self.closed:
                return
            try:
                self.outbox.write(data)
                self.outbox.flush()
            except (OSError, ValueError):  # a broken pipe, or a closed file
                self.closed = True

    def error(self, request_id: int, text: str, **fields) -> None:
        self.send(response("error", request_id, message=text, **fields))

    def progress(self, request_id: int, done: int, total: int, text: str = "") -> None:
        """Stream progress; raises ``Cancelled`` if the request was cancelled (CONTRACTS item 1)."""
        if request_id in self.cancelled or self.closed:
            raise Cancelled()
        self.send(response("progress", request_id, done=int(done), total=int(total), text=str(text)))

    # -- input -----------------------------------------------------------------------
    def read_requests(self) -> None:
        """Reader thread: queue valid requests, answer bad ones, end on a broken stream."""
        try:
            while True:
                try:
                    message = read_message(self.inbox)
                    if message is None:
                        return
                    validate_request(message)
                except FrameError as error:
                    self.error(error.request_id, f"bad request: {error}")
                    continue
                if message.type == "cancel":
                    self.cancelled.add(message["target"])
                    if len(self.cancelled) > 10_000:  # ids of requests that had finished
                        self.cancelled.clear()
                    self.send(response("result", message.id, cancelled=message["target"]))
                    continue
                self.jobs.put(message)
                if message.type == "shutdown":
                    return
        except (ProtocolError, EOFError, OSError, ValueError) as error:
            self.error(-1, f"protocol error: {error}", fatal=True)
        except BaseException as error:  # the reader must never die silently: the main loop would wait forever
            self.error(-1, f"protocol error: {type(error).__name__}: {error}", fatal=True)
        finally:
            self.jobs.put(None)

    # -- requests ----------------------------------------------------------------------
    def run(self) -> int:
        threading.Thread(target=self.read_requests, name="rfit-reader", daemon=True).start()
        while not self.closed:
            message = self.jobs.get()
            if message is None or message.type == "shutdown":
                if message is not None:
                    self.send(response("result", message.id, shutdown=True))
                return 0
            self.answer(message)
        return 0

    def answer(self, message: Message) -> None:
        handler = getattr(self, f"handle_{message.type}", None)
        try:
            if handler is None:
                raise ValueError(f"unknown request type {message.type!r}")
            if message.id in self.cancelled:
                raise Cancelled()
            fields, arrays = handler(message)
            self.send(response("result", message.id, arrays, **fields))
        except Cancelled:
            self.error(message.id, "cancelled", cancelled=True)
        except Exception as error:  # every failure becomes a readable answer
            text = str(error) if isinstance(error, ValueError | RuntimeError) else f"{type(error).__name__}: {error}"
            self.error(message.id, text, detail=traceback.format_exc())
        finally:
            self.cancelled.discard(message.id)

    def handle_hello(self, message: Message):
        import torch

        info = {
            "backend": __version__,
            "protocol": PROTOCOL_VERSION,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "device": "cpu",
        }
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(device="cuda", gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
        return info, None

    def handle_index_library(self, message: Message):
        from backend.library import IndexOptions, build_index

        given = message.get("options") or {}
        unknown = sorted(set(given) - set(IndexOptions.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown index options {unknown}; known: {sorted(IndexOptions.__dataclass_fields__)}")
        options = IndexOptions(**given) if given else None
        report = build_index(
            message["library"],
            message["index"],
            options=options,
            jobs=message.get("jobs", 1),
            progress=lambda done, total, path: self.progress(message.id, done, total, path),
            rebuild=message.get("rebuild", False),
            relocate=message.get("relocate", False),
        )
        return {
            "summary": report.summary(),
            "added": report.added,
            "updated": report.updated,
            "removed": report.removed,
            "skipped": [s.__dict__ for s in report.skipped],
        }, None

    def fitter(self, checkpoint: str, index: str):
        from backend.fitting import Fitter

        if not os.path.isfile(checkpoint):
            raise ValueError(f"checkpoint not found: {checkpoint}")
        key = (str(Path(checkpoint).resolve()), str(Path(index).resolve()))
        manifest = Path(index) / "manifest.json"
        stamp = (manifest.stat().st_mtime_ns, os.stat(checkpoint).st_mtime_ns) if manifest.exists() else None
        cached = self.fitters.get(key)
        if cached is None or cached[1] != stamp:  # the index or the checkpoint changed: reload
            self.fitters[key] = (Fitter.open(checkpoint, index), stamp)
        self.fitters.move_to_end(key)
        while len(self.fitters) > MAX_FITTERS:
            self.fitters.popitem(last=False)
        return self.fitters[key][0]

    @staticmethod
    def fit_options(message: Message):
        from backend.fitting import FitOptions

        return FitOptions(**message.get("options", {}))  # names and ranges checked by validate_request

    @staticmethod
    def source_index(index, message: Message) -> int:
        row = message["source_index"]
        if row >= len(index):
            raise ValueError(f"source_index {row} is out of range: the index has {len(index)} sources")
        return row

    def handle_fit(self, message: Message):
        from backend.fitting import DEFAULT_CHECKPOINT
        from backend.inputs import check_points, image_array

        options = self.fit_options(message)
        if "points" in message.arrays:
            points = check_points(message.arrays["points"], "the target points")
        elif "image" in message.arrays:
            image = image_array(message.arrays["image"], "the target image")
        else:
            raise ValueError("a fit needs a 'points' (N x 3) or an 'image' (H x W x 3) array")
        fitter = self.fitter(message.get("checkpoint") or str(DEFAULT_CHECKPOINT), message["index"])

        def progress(done: int, total: int, text: str) -> None:
            self.progress(message.id, done, total, text)

        progress(0, 1, "fitting")
        if "points" in message.arrays:
            result = fitter.fit_points(points, options, progress=progress)
        else:
            result = fitter.fit_image(image, options, progress=progress)
        arrays = {}
        for rank in message.get("meshes_for", [0]):  # part geometry of the candidates the add-on will build
            if rank < len(result.candidates):
                arrays.update(self.mesh_arrays(fitter.index, result.candidates[rank].source_index, f"c{rank}_"))
        if message.get("thumbnails"):
            arrays.update(self.thumbnails(fitter.index, result.candidates, message["thumbnails"], progress))
        fields = result.to_json()
        if "points" in message.arrays:
            progress(0, 1, "measuring each part")
            self.add_residuals(fields, fitter.sources, points, result.candidates, result.view)
        progress(1, 1, "done")
        return fields, arrays

    @staticmethod
    def thumbnails(index, candidates: list, size: int, progress) -> dict[str, np.ndarray]:
        """``thumbnail<rank>`` pictures: the ones drawn at index time, else (an index from before them,
        another size) the deformed candidate drawn now."""
        from backend.export import render_thumbnail

        arrays = {}
        for candidate in candidates:
            picture = index.thumbnail(candidate.source_index, size)
            if picture is None:
                progress(candidate.rank, len(candidates), "drawing thumbnails")
                picture = render_thumbnail(index, candidate, size)
            arrays[f"thumbnail{candidate.rank}"] = picture
        return arrays

    @staticmethod
    def add_residuals(fields: dict, sources, points: np.ndarray, candidates: list, view: dict | None) -> None:
        """Each candidate's per-part residuals (``backend.residuals``; a scan's ``view``: only what its scanner
        sees) into its JSON, as ``residuals``."""
        from backend.residuals import candidate_residuals

        for entry, residuals in zip(fields["candidates"], candidate_residuals(sources, points, candidates, view)):
            entry["residuals"] = residuals

    @staticmethod
    def mesh_arrays(index, source_index: int, prefix: str = "") -> dict[str, np.ndarray]:
        """Each part's geometry (file frame) and, where the file has one, its colour."""
        from backend.export import part_colours, part_meshes

        arrays = {}
        for k, (mesh, colour) in enumerate(zip(part_meshes(index, source_index), part_colours(index, source_index))):
            arrays[f"{prefix}part{k}_vertices"] = np.asarray(mesh.vertices, np.float32)
            arrays[f"{prefix}part{k}_faces"] = np.asarray(mesh.faces, np.int32)
            if colour is not None:
                arrays[f"{prefix}part{k}_colour"] = np.asarray(colour, np.float32)
        return arrays

    def handle_part_meshes(self, message: Message):
        from backend.library import load_index

        index = load_index(message["index"])
        row = self.source_index(index, message)
        return {"source": index.sources[row].path}, self.mesh_arrays(index, row)

    @staticmethod
    def boxes_array(message: Message, name: str = "boxes") -> np.ndarray:
        boxes = message.arrays[name]
        if boxes.dtype.kind not in "fiu" or boxes.ndim != 2 or boxes.shape[1] != 6:
            raise ValueError(f"'{name}' must be a K x 6 array of numbers, got {boxes.dtype} {boxes.shape}")
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"'{name}' has NaN or infinite values")
        return boxes.astype(np.float64)

    def handle_refit(self, message: Message):
        from backend.fitting import DEFAULT_CHECKPOINT
        from backend.inputs import check_points

        options = self.fit_options(message)
        if "points" not in message.arrays or "boxes" not in message.arrays:
            raise ValueError("a refit needs the target 'points' and the current 'boxes' arrays")
        points = check_points(message.arrays["points"], "the target points")
        boxes = self.boxes_array(message)
        fitter = self.fitter(message.get("checkpoint") or str(DEFAULT_CHECKPOINT), message["index"])
        result = fitter.refit(
            points,
            self.source_index(fitter.index, message),
            boxes,
            np.asarray(message["locked"], bool),
            float(message.get("yaw", 0.0)),
            options,
            progress=lambda done, total, text: self.progress(message.id, done, total, text),
        )
        fields = result.to_json()
        self.add_residuals(fields, fitter.sources, points, result.candidates, result.view)
        return fields, None

    def handle_residuals(self, message: Message):
        """Per-part residuals (``backend.residuals``) of source ``source_index`` at ``boxes`` (the fit's
        frame, as edited) against the target ``points`` (seen from ``viewpoint`` for a single-view scan): what the
        add-on colours, without refitting."""
        from types import SimpleNamespace

        from backend.fitting import DEFAULT_CHECKPOINT
        from backend.inputs import check_points
        from backend.residuals import candidate_residuals

        if "points" not in message.arrays or "boxes" not in message.arrays:
            raise ValueError("residuals need the target 'points' and the current 'boxes' arrays")
        points = check_points(message.arrays["points"], "the target points")
        boxes = self.boxes_array(message)
        fitter = self.fitter(message.get("checkpoint") or str(DEFAULT_CHECKPOINT), message["index"])
        row = self.source_index(fitter.index, message)
        if len(boxes) != fitter.index.sources[row].n_parts:
            raise ValueError(f"source {row} has {fitter.index.sources[row].n_parts} parts: boxes must be as many x 6")
        fit = SimpleNamespace(
            source_index=row, source_boxes=fitter.index_boxes(row), fitted_boxes=boxes, yaw=float(message.get("yaw", 0))
        )
        viewpoint = message.get("viewpoint")  # the fit's view direction for a single-view scan
        view = None if viewpoint is None else {"direction": viewpoint}
        return candidate_residuals(fitter.sources, points, [fit], view)[0], None

    def handle_keep_connected(self, message: Message):
        from backend.editing import keep_connected
        from backend.library import load_index

        index = load_index(message["index"])
        row = self.source_index(index, message)
        if "boxes" not in message.arrays:
            raise ValueError("keep_connected needs the current 'boxes' array")
        boxes = self.boxes_array(message)
        source = index.load_source(row)
        if len(boxes) != source.n_parts or len(message["locked"]) != source.n_parts:
            raise ValueError(
                f"source {row} has {source.n_parts} parts: boxes must be {source.n_parts} x 6 and locked as long"
            )
        excluded = message.get("excluded")
        reference = self.boxes_array(message, "reference") if "reference" in message.arrays else None
        if reference is not None and len(reference) != source.n_parts:
            raise ValueError(f"source {row} has {source.n_parts} parts: reference must be {source.n_parts} x 6")
        result = keep_connected(
            source.boxes,
            source.joint_pairs,
            source.joint_points,
            boxes,
            np.asarray(message["locked"], bool),
            excluded=None if excluded is None else np.asarray(excluded, bool),
            mirror=source.part_mirror,
            symmetry_axis=source.symmetry_axis,
            keep_symmetry=bool(message.get("keep_symmetry", False)),
            min_half_size=source.min_half_size,
            reference=reference,
            yaw=float(message.get("yaw", 0.0)),
        )
        return {
            "locked": result.locked.tolist(),
            "lock_residual": result.lock_residual,
            "max_gap": float(result.gaps.max(initial=0.0)),
            "feasible": bool(result.feasible),
            "message": result.message,
            "conflicts": [[int(v) for v in conflict] for conflict in result.conflicts],
        }, {"boxes": result.boxes}


WORKER_NICENESS = 10


def _yield_to_the_ui() -> None:
    """Run below Blender's priority: on a machine whose cores the fit fills, Blender's UI (and its software
    renderer's threads, under Xvfb) would otherwise wait for a time slice. The fit still gets every idle core."""
    try:
        os.nice(WORKER_NICENESS)
    except (AttributeError, OSError):  # not POSIX, or not permitted: run at the normal priority
        pass


def serve(inbox: BinaryIO | None = None, outbox: BinaryIO | None = None) -> int:
    """Run the worker on the process's stdin/stdout (or the given streams)."""
    if inbox is not None or outbox is not None:
        return Worker(inbox or sys.stdin.buffer, outbox or sys.stdout.buffer).run()
    _yield_to_the_ui()
    # Keep a private handle on the real stdout for frames, and send
    # anything else printed (by us or a library, in Python or C) to stderr.
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    code = Worker(sys.stdin.buffer, outbox).run()
    # Leave at once: a normal interpreter shutdown would wait on the reader thread's
    # lock on stdin (and abort) when the reader is still blocked reading it.
    sys.stderr.flush()
    os._exit(code)
