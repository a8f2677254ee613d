"""The backend worker: ``python -m backend serve``, driven over stdin/stdout.

One reader thread takes requests off stdin (answering ``cancel`` at once);
the main thread runs them one at a time and streams ``progress`` while it
works. Stray prints from libraries cannot corrupt the protocol: the
process's own stdout is moved to stderr, and frames go to a private copy of
the original stdout.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import BinaryIO

import numpy as np

from backend import __version__
from backend.protocol import PROTOCOL_VERSION, Message, ProtocolError, read_message, response, write_message


class Cancelled(Exception):
    """The add-on asked to stop the request being worked on."""


class Worker:
    def __init__(self, inbox: BinaryIO, outbox: BinaryIO):
        self.inbox = inbox
        self.outbox = outbox
        self.lock = threading.Lock()
        self.jobs: queue.Queue[Message | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.fitters: dict[tuple[str, str], object] = {}

    # -- output ----------------------------------------------------------------------
    def send(self, message: Message) -> None:
        with self.lock:
            write_message(self.outbox, message)

    def progress(self, request_id: int, done: int, total: int, text: str = "") -> None:
        if request_id in self.cancelled:
            raise Cancelled()
        self.send(response("progress", request_id, done=done, total=total, text=text))

    # -- input -----------------------------------------------------------------------
    def read_requests(self) -> None:
        try:
            while True:
                message = read_message(self.inbox)
                if message is None:
                    break
                if message.type == "cancel":
                    self.cancelled.add(int(message["target"]))
                    self.send(response("result", message.id, cancelled=int(message["target"])))
                    continue
                self.jobs.put(message)
                if message.type == "shutdown":
                    return
        except (ProtocolError, EOFError, KeyError, ValueError) as error:
            self.send(response("error", -1, message=f"protocol error: {error}", fatal=True))
        self.jobs.put(None)

    # -- requests ----------------------------------------------------------------------
    def run(self) -> int:
        threading.Thread(target=self.read_requests, name="rfit-reader", daemon=True).start()
        while True:
            message = self.jobs.get()
            if message is None or message.type == "shutdown":
                if message is not None:
                    self.send(response("result", message.id, shutdown=True))
                return 0
            handler = getattr(self, f"handle_{message.type}", None)
            try:
                if handler is None:
                    raise ValueError(f"unknown request type {message.type!r}")
                if message.id in self.cancelled:
                    raise Cancelled()
                fields, arrays = handler(message)
                self.send(response("result", message.id, arrays, **fields))
            except Cancelled:
                self.send(response("error", message.id, message="cancelled", cancelled=True))
            except Exception as error:  # every failure becomes a readable answer
                self.send(
                    response(
                        "error",
                        message.id,
                        message=f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else str(error),
                        detail=traceback.format_exc(),
                    )
                )
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

        options = IndexOptions(**message.get("options", {})) if message.get("options") else None
        report = build_index(
            message["library"],
            message["index"],
            options=options,
            jobs=int(message.get("jobs", 1)),
            progress=lambda done, total, path: self.progress(message.id, done, total, path),
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

        key = (str(Path(checkpoint).resolve()), str(Path(index).resolve()))
        manifest = Path(index) / "manifest.json"
        stamp = manifest.stat().st_mtime_ns if manifest.exists() else None
        cached = self.fitters.get(key)
        if cached is None or cached[1] != stamp:  # the index changed: reload
            self.fitters[key] = (Fitter.open(checkpoint, index), stamp)
        return self.fitters[key][0]

    def handle_fit(self, message: Message):
        from backend.fitting import DEFAULT_CHECKPOINT, FitOptions

        fitter = self.fitter(message.get("checkpoint") or str(DEFAULT_CHECKPOINT), message["index"])
        options = FitOptions(
            **{k: v for k, v in message.get("options", {}).items() if k in FitOptions.__dataclass_fields__}
        )
        self.progress(message.id, 0, 1, "fitting")
        if "points" in message.arrays:
            result = fitter.fit_points(message.arrays["points"], options)
        elif "image" in message.arrays:
            result = fitter.fit_image(message.arrays["image"], options)
        else:
            raise ValueError("a fit needs a 'points' (N x 3) or an 'image' (H x W x 3) array")
        arrays = {}
        for rank in message.get("meshes_for", [0]):  # part geometry of the candidates the add-on will build
            if rank < len(result.candidates):
                arrays.update(self.mesh_arrays(fitter.index, result.candidates[rank].source_index, f"c{rank}_"))
        if message.get("thumbnails"):
            from backend.export import render_thumbnail

            for candidate in result.candidates:
                arrays[f"thumbnail{candidate.rank}"] = render_thumbnail(
                    fitter.index, candidate, int(message["thumbnails"])
                )
        self.progress(message.id, 1, 1, "done")
        return result.to_json(), arrays

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
        return {"source": index.sources[int(message["source_index"])].path}, self.mesh_arrays(
            index, int(message["source_index"])
        )

    def handle_refit(self, message: Message):
        from backend.fitting import DEFAULT_CHECKPOINT, FitOptions

        fitter = self.fitter(message.get("checkpoint") or str(DEFAULT_CHECKPOINT), message["index"])
        options = FitOptions(
            **{k: v for k, v in message.get("options", {}).items() if k in FitOptions.__dataclass_fields__}
        )
        if "points" not in message.arrays or "boxes" not in message.arrays:
            raise ValueError("a refit needs the target 'points' and the current 'boxes' arrays")
        result = fitter.refit(
            message.arrays["points"],
            int(message["source_index"]),
            message.arrays["boxes"],
            np.asarray(message["locked"], bool),
            float(message.get("yaw", 0.0)),
            options,
        )
        return result.to_json(), None

    def handle_keep_connected(self, message: Message):
        from backend.editing import keep_connected
        from backend.library import load_index

        index = load_index(message["index"])
        source = index.load_source(int(message["source_index"]))
        if "boxes" not in message.arrays:
            raise ValueError("keep_connected needs the current 'boxes' array")
        excluded = message.get("excluded")
        result = keep_connected(
            source.boxes,
            source.joint_pairs,
            source.joint_points,
            message.arrays["boxes"],
            np.asarray(message["locked"], bool),
            excluded=None if excluded is None else np.asarray(excluded, bool),
            mirror=source.part_mirror,
            symmetry_axis=source.symmetry_axis,
            keep_symmetry=bool(message.get("keep_symmetry", False)),
            min_half_size=source.min_half_size,
        )
        return {
            "locked": result.locked.tolist(),
            "lock_residual": result.lock_residual,
            "max_gap": float(result.gaps.max(initial=0.0)),
        }, {"boxes": result.boxes}


def serve(inbox: BinaryIO | None = None, outbox: BinaryIO | None = None) -> int:
    """Run the worker on the process's stdin/stdout (or the given streams)."""
    if outbox is None:
        # Keep a private handle on the real stdout for frames, and send
        # anything else printed (by us or a library, in Python or C) to stderr.
        outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
        sys.stdout = sys.stderr
    return Worker(inbox or sys.stdin.buffer, outbox).run()
