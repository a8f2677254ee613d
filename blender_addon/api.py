"""The add-on's scriptable API: every request to the worker is built here.

A ``Job`` is one request and what its answer does to the scene. The
``*_job`` functions build them (reading the panel's settings where a value
is not given) and check the input before any work starts. ``run`` sends a
job and waits (scripts, tests, the operators' ``execute``); ``start`` sends
it and ``pump`` routes the worker's messages to it without ever blocking
(the operators' modal ``invoke``, live mode). Both paths share the job, so
scripts and the UI do the same thing. Failures raise ``RfitError`` with a
message for the user and leave the scene untouched.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import build, quality, targets
from .client import BackendClient, BackendUnavailable, explain
from .protocol import ProtocolError, rotation_z

THUMBNAIL_SIZE = 96
START_LIMIT = 120.0  # seconds a starting worker may take to answer its first request
SILENCE_LIMIT = 180.0  # seconds a busy worker may go without a progress message

_client: BackendClient | None = None
_jobs: dict[int, Job] = {}
backend_info: dict = {}
_state = {"failure": "", "hello": None}


class RfitError(RuntimeError):
    """A user-facing failure: shown in the UI, nothing in the scene changed."""


@dataclass
class Job:
    """A request to the worker (``kind``, ``arrays``, ``fields``) and
    ``finish(context, answer)``, which applies the answer to the scene and
    returns the outcome. The rest is filled in while it runs."""

    kind: str
    fields: dict
    arrays: dict | None = None
    finish: Callable | None = None
    label: str = "working"
    used: dict = field(default_factory=dict)  # the settings it was built with (the redo panel shows them)
    id: int | None = None
    done: int = 0
    total: int = 0
    text: str = ""
    answer: object = None
    error: str = ""
    heard: float = 0.0  # time.monotonic() of the last message about it
    texts: list = field(default_factory=list)  # every progress text, in order

    @property
    def over(self) -> bool:
        return self.answer is not None or bool(self.error)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


# -- the worker -----------------------------------------------------------------------------
def preferences(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def configured_python(context) -> str:
    """The backend interpreter: $RFIT_BACKEND_PYTHON, else the preference."""
    from .client import ENV_PYTHON

    prefs = preferences(context)
    return os.environ.get(ENV_PYTHON) or (getattr(prefs, "backend_python", "") if prefs is not None else "")


def client(context) -> BackendClient:
    """The running worker; started (without waiting for it) when there is
    none, when it died, or when the configured Python changed."""
    global _client
    python = configured_python(context) or None
    if _client is not None and (_client.python != python or not _client.alive):
        _drop("the backend was restarted")
    if _client is None:
        _state["failure"] = ""
        try:
            _client = BackendClient(python)
        except BackendUnavailable as error:
            _state["failure"] = str(error)
            raise RfitError(str(error)) from error
        hello = Job("hello", {}, finish=lambda context, answer: backend_info.update(answer.header), label="starting")
        _send(hello)
        _state["hello"] = hello
    return _client


def restart_worker(context) -> None:
    """Replace the worker now (the backend preference changed); a failure to start shows in the panel."""
    _drop("the backend was restarted")
    _state["failure"] = ""
    try:
        client(context)
    except RfitError:
        pass  # kept in the backend state the panel shows


def _drop(reason: str) -> None:
    """Kill the worker at once; its jobs fail with ``reason``."""
    global _client
    if _client is not None:
        _client.kill()
        _client = None
    _fail_all(reason)
    backend_info.clear()
    _state["hello"] = None


def _send(job: Job) -> None:
    try:
        job.id = _client.submit(job.kind, job.arrays, **job.fields)
    except (BackendUnavailable, ProtocolError, ValueError) as error:  # ValueError: NaN in a JSON field
        raise RfitError(str(error)) from error
    job.heard = time.monotonic()
    _jobs[job.id] = job


def shutdown() -> None:
    """Stop the worker (the add-on is disabled); every job still waiting fails."""
    global _client
    if _client is not None:
        _client.shutdown(timeout=5.0)
        _client = None
    _fail_all("the backend was stopped")
    backend_info.clear()
    _state["hello"], _state["failure"] = None, ""


def restart(context, reason: str) -> None:
    """Kill an unresponsive worker (its jobs fail with ``reason``); the next request starts a new one."""
    _drop(reason)
    _state["failure"] = reason


def _fail_all(reason: str) -> None:
    for job in list(_jobs.values()):
        job.error = job.error or reason
    _jobs.clear()


def backend_state() -> tuple[str, str]:
    """(text, icon) of the worker's state, as true as the add-on knows it."""
    if _client is not None and not _client.alive and not _state["failure"]:
        _state["failure"] = f"the backend exited: {_client.last_error()}"  # it restarts on the next request
    if _state["failure"]:
        return f"Backend failed: {_state['failure']}", "ERROR"
    if _client is None:
        return "Backend: not started", "QUESTION"
    if not backend_info:
        return "Backend starting…", "SORTTIME"
    device = backend_info.get("gpu", backend_info.get("device", "?"))
    return f"Backend: {device}, torch {backend_info.get('torch', '?')}", "CHECKMARK"


def pump() -> None:
    """Route every message that arrived to its job (never blocks)."""
    if _client is None:
        return
    for message in _client.poll():
        if message.id == -1:  # the worker died or its stream broke: every job fails
            reason = message["message"]
            _state["failure"] = reason
            _fail_all(reason)
            continue
        job = _jobs.get(message.id)
        if job is None:  # a cancelled job's late answer, or a cancel's acknowledgement
            continue
        job.heard = time.monotonic()
        if message.type == "progress":
            job.done, job.total, job.text = int(message["done"]), int(message["total"]), message.get("text", "")
            if not job.texts or job.texts[-1] != job.text:
                job.texts.append(job.text)
        elif message.type == "result":
            del _jobs[message.id]
            job.answer = message
        elif message.type == "error":
            del _jobs[message.id]
            job.error = "cancelled" if message.get("cancelled") else explain([message["message"]], _client.python)
    hello = _state["hello"]
    if hello is not None and hello.over:
        _state["hello"] = None
        if hello.error:
            _state["failure"] = hello.error
        else:
            hello.finish(None, hello.answer)


def start(context, job: Job) -> Job:
    """Send ``job`` (starting the worker if needed); poll it with ``pump``."""
    client(context)
    _send(job)
    return job


def cancel(job: Job) -> None:
    """Give up on ``job`` at once: its answer, when it comes, is ignored (the scene is untouched)."""
    if _jobs.pop(job.id, None) is not None and _client is not None and _client.alive:
        try:
            _client.submit("cancel", target=job.id)
        except BackendUnavailable:
            pass
    job.error = job.error or "cancelled"


def overdue(job: Job) -> str:
    """A message when ``job`` has waited too long without a word from the worker, else ''."""
    limit = START_LIMIT if _state["hello"] is not None else SILENCE_LIMIT
    if job.over or time.monotonic() - job.heard < limit:
        return ""
    return (
        f"the backend did not answer for {limit:.0f} s and was restarted; try again "
        "(Check Backend shows whether it starts)"
    )


def finish(context, job: Job):
    """Apply a finished job's answer to the scene; raises ``RfitError`` if it failed."""
    if job.error:
        raise RfitError(job.error)
    return job.finish(context, job.answer) if job.finish is not None else job.answer.header


def run(context, job: Job, timeout: float | None = None):
    """Send ``job``, wait for its answer and apply it (scripts and ``execute``)."""
    start(context, job)
    while not job.over:
        pump()
        late = overdue(job)
        if late or (timeout is not None and time.monotonic() - job.heard > timeout):
            restart(context, late or f"no answer within {timeout} s")
            raise RfitError(job.error)
        if not job.over:
            time.sleep(0.005)
    return finish(context, job)


def active_jobs() -> list[Job]:
    return [job for job in _jobs.values() if job.kind != "hello"]


# -- settings ---------------------------------------------------------------------------------
def _abspath(path: str) -> str:
    import bpy

    return bpy.path.abspath(path) if path else ""


def default_index(directory: str) -> str:
    return os.path.join(os.path.abspath(directory), ".rfit-index")


def index_path(context) -> str:
    """The panel's index: its own folder, else ``.rfit-index`` in the library."""
    s = context.scene.rfit
    if s.index_directory:
        return _abspath(s.index_directory)
    return default_index(_abspath(s.library_directory)) if s.library_directory else ""


def checkpoint_path(context) -> str:
    prefs = preferences(context)
    return _abspath(prefs.checkpoint) if prefs is not None and prefs.checkpoint else ""


# -- the jobs -----------------------------------------------------------------------------
def hello_job(context) -> Job:
    """Ask the worker what it runs on (starts it if needed)."""

    def done(context, answer):
        backend_info.clear()
        backend_info.update(answer.header)
        return dict(backend_info)

    return Job("hello", {}, finish=done, label="checking the backend")


def index_job(context, directory: str = "", index: str = "") -> Job:
    """Index (or update the index of) a folder of models: ``directory`` (default
    the panel's library) into ``index`` (default the panel's index for the
    panel's library, ``.rfit-index`` inside any other)."""
    s = context.scene.rfit
    folder = _abspath(directory or s.library_directory)
    if not folder or not os.path.isdir(folder):
        raise RfitError(f"library folder not found: {folder or '(none chosen)'}")
    folder = os.path.abspath(folder)
    index = _abspath(index) or (default_index(folder) if directory else index_path(context))

    def done(context, answer):
        s = context.scene.rfit
        s.library_directory, s.index_directory = folder, index
        return answer.header

    return Job("index_library", {"library": folder, "index": index}, finish=done, label="indexing")


def fit_job(
    context,
    *,
    target: str = "PANEL",
    obj=None,
    image_path: str = "",
    top_k: int = 0,
    refine: bool | None = None,
    yaw_search: int = 0,
    index: str = "",
    checkpoint: str = "",
    match_view: bool | None = None,
    image_height: float | None = None,
) -> Job:
    """Fit a target and build the best candidate (the finished job returns its parent empty).

    ``target`` is "OBJECT" (``obj``, default the active object), "IMAGE"
    (``image_path``, default the panel's file) or "PANEL" (an ``image_path``
    if given, else the panel's choice). Zero / None / "" take the panel's
    value (``image_height`` 0: the library model's own size). ``job.used`` records what was used."""
    s = context.scene.rfit
    if target == "PANEL":
        target = "IMAGE" if image_path else s.target
    index = _abspath(index) if index else index_path(context)
    if not index or not os.path.exists(os.path.join(index, "manifest.json")):
        raise RfitError(f"no library index at {index or '(none chosen)'}: index a library first")
    used = {
        "target": target,
        "object_name": "",
        "image_path": "",
        "top_k": int(top_k or s.top_k),
        "refine": bool(s.refine if refine is None else refine),
        "yaw_search": int(yaw_search or s.yaw_search),
    }
    try:
        if target == "IMAGE":
            path = _abspath(image_path or s.image_path)
            if not path:
                raise RfitError("choose a reference image file, or fit the selected object instead")
            used["image_path"] = path
            arrays, described = {"image": targets.image_pixels(targets.load_image(path))}, {"image": path}
        else:
            obj = obj if obj is not None else context.active_object
            points = targets.points_from_object(obj, context.evaluated_depsgraph_get())
            used["object_name"] = obj.name
            arrays, described = {"points": points.astype(np.float32)}, {"object": obj.name}
    except targets.TargetError as error:
        raise RfitError(str(error)) from error
    options = {key: used[key] for key in ("top_k", "refine", "yaw_search")}
    checkpoint = checkpoint or checkpoint_path(context)
    info = {"index": index, "checkpoint": checkpoint, "target": described, "options": options}
    if target == "IMAGE":  # an image says nothing about where the object is: put it at the 3D cursor
        info["placed_at"] = [float(v) for v in context.scene.cursor.location]
        used["match_view"] = bool(s.match_view if match_view is None else match_view)
        used["image_height"] = float(s.image_height if image_height is None else image_height)
        if used["image_height"] > 0:
            info["height"] = used["image_height"]
    fields = {
        "index": index,
        "checkpoint": checkpoint or None,
        "options": options,
        "meshes_for": [0],
        "thumbnails": THUMBNAIL_SIZE,
    }

    def done(context, answer):
        parent = build_answer(context, answer, info)
        if used.get("match_view"):
            try:
                turn_to_view(context, parent)  # the viewport as it is when the fit arrives
            except RfitError as error:  # no view estimated, or no 3D view: the fit stays at the cursor
                parent[build.PROP_PREFIX + "view_note"] = str(error)
        return parent

    return Job("fit", fields, arrays, finish=done, label="fitting", used=used)


def build_answer(context, answer, info: dict):
    """Build the best candidate of a fit answer, select it and list the candidates."""
    candidates = answer["candidates"]
    if not candidates:
        raise RfitError("the library has no source to fit")
    info["view"] = answer.get("view")  # where the image's camera (or the scanner) was, if the backend knows
    for candidate in candidates:
        if info.get("height"):
            _scale_to_height(candidate, info["height"])
        if "placed_at" in info:
            _move(candidate, np.asarray(info["placed_at"], dtype=np.float64))
    for rank, name in store_thumbnails(answer).items():
        candidates[rank]["thumbnail"] = name
    parent = build.build_fit(context, candidates[0], answer.arrays, "c0_", info)
    parent[build.PROP_PREFIX + "candidates"] = json.dumps(candidates)
    _keep_residual_view(context, parent)
    _select(context, parent)
    show_candidates(context, candidates, 0)
    return parent


def _move(candidate: dict, offset: np.ndarray, turn: float = 0.0, about=(0.0, 0.0, 0.0)) -> None:
    """Move a candidate rigidly (its pivot, boxes and yaw in the fit frame): turned by ``turn`` radians
    about the vertical through ``about`` (3,), then translated by ``offset`` (3,)."""
    rotation, about = rotation_z(turn), np.asarray(about, dtype=np.float64)

    def moved(point) -> np.ndarray:
        return about + rotation @ (np.asarray(point, dtype=np.float64) - about) + offset

    candidate["pivot"] = moved(candidate["pivot"]).tolist()
    candidate["yaw"] = float(candidate["yaw"]) + turn
    for part in candidate["parts"]:
        for key in ("fitted_box", "original_box"):
            box = np.asarray(part[key], dtype=np.float64)
            box[:3] = moved(box[:3])
            part[key] = box.tolist()


def _scale_to_height(candidate: dict, height: float) -> None:
    """Scale a candidate uniformly about the middle of its base so it stands ``height`` (metres) tall: its
    pivot, fitted and placed boxes (a uniform scale of every box keeps every joint); the source's boxes, in its
    file's frame, stay its own, so each part object's scale carries the factor."""
    boxes = np.array([part["fitted_box"] for part in candidate["parts"]], dtype=np.float64)
    low, high = (boxes[:, :3] - boxes[:, 3:]).min(0), (boxes[:, :3] + boxes[:, 3:]).max(0)
    if high[2] - low[2] <= 1e-9:
        return
    factor, about = height / (high[2] - low[2]), np.array([*(low[:2] + high[:2]) / 2, low[2]])
    candidate["pivot"] = (about + factor * (np.asarray(candidate["pivot"], dtype=np.float64) - about)).tolist()
    for part in candidate["parts"]:
        for key in ("fitted_box", "original_box"):
            box = np.asarray(part[key], dtype=np.float64)
            part[key] = [*(about + factor * (box[:3] - about)), *(factor * box[3:])]


def show_candidates(context, candidates: list[dict], active: int) -> None:
    """List a fit's candidates in the panel: name, picture, chamfer and its rating."""
    s = context.scene.rfit
    s.candidates.clear()
    for c in candidates:
        item = s.candidates.add()
        item.rank, item.source, item.thumbnail = c["rank"], c["source"], c.get("thumbnail", "")
        chamfer = c.get("measured_chamfer_x100")
        item.chamfer = chamfer if chamfer is not None else -1.0
        item.rating = quality.rating(chamfer)
    s.candidate_index = active


def store_thumbnails(answer) -> dict[int, str]:
    """New image datablocks (one set per fit, so no panel shows a stale
    picture) of the candidates' thumbnails, by rank."""
    import bpy

    names = {}
    for key, pixels in answer.arrays.items():
        if not key.startswith("thumbnail"):
            continue
        rank = int(key[len("thumbnail") :])
        height, width = pixels.shape[:2]
        image = bpy.data.images.new(f"rfit thumbnail {rank}", width, height)
        rgba = np.concatenate(
            [pixels[::-1].astype(np.float32) / 255.0, np.ones((height, width, 1), np.float32)], axis=2
        )
        image.pixels.foreach_set(rgba.reshape(-1))
        image.update()
        try:
            image.pack()  # packed pixels survive undo (a generated image's buffer comes back black)
        except RuntimeError:
            pass
        names[rank] = image.name
    return names


def _select(context, obj) -> None:
    for other in context.selected_objects:
        other.select_set(False)
    obj.select_set(True)
    context.view_layer.objects.active = obj


def fit_parent(obj):
    """The parent empty of a fit from any of its objects, or None."""
    while obj is not None and not obj.get(build.PROP_PREFIX + "result"):
        obj = obj.parent
    return obj


def _parent(context, parent):
    parent = parent or fit_parent(context.active_object)
    if parent is None:
        raise RfitError("select a fitted result first")
    return parent


def _still_there(context, name: str):
    """The fit's parent by name when an answer arrives (the user may have undone it meanwhile)."""
    import bpy

    parent = bpy.data.objects.get(name)
    if parent is None or not parent.get(build.PROP_PREFIX + "result"):
        raise RfitError("the fit was removed while the backend worked; nothing changed")
    return parent


def candidate_job(context, rank: int, parent=None) -> Job:
    """Replace the fit by its candidate ``rank`` (the finished job returns the new parent)."""
    parent = _parent(context, parent)
    candidates = json.loads(parent[build.PROP_PREFIX + "candidates"])
    if not 0 <= rank < len(candidates):
        raise RfitError(f"there are {len(candidates)} candidates; rank {rank} does not exist")
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    name = parent.name

    def done(context, answer):
        old = _still_there(context, name)
        new = build.build_fit(context, candidates[rank], answer.arrays, "", info)
        new[build.PROP_PREFIX + "candidates"] = json.dumps(candidates)
        _keep_residual_view(context, new)
        build.remove_fit(old)
        _select(context, new)
        show_candidates(context, candidates, rank)
        return new

    fields = {"index": info["index"], "source_index": candidates[rank]["source_index"]}
    return Job("part_meshes", fields, finish=done, label="loading the candidate", used={"rank": rank})


def keep_connected_job(context, parent=None, keep_symmetry: bool | None = None, live: bool = False) -> Job:
    """Move the parts the user did not edit so every joint is attached again.

    Edited parts (``build.note_edits``) are held (the backend moves them only
    when the edits contradict each other, and says so); rotated parts are left
    out of the solve. ``live``: edited parts are never written (the user may
    still be dragging them). The finished job returns what was held."""
    parent = _parent(context, parent)
    keep_symmetry = context.scene.rfit.keep_symmetry if keep_symmetry is None else bool(keep_symmetry)
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    edited = build.note_edits(parent)
    boxes, rotated = build.current_boxes(parent)
    name = parent.name

    def done(context, answer):
        parent = _still_there(context, name)
        build.apply_boxes(parent, answer.arrays["boxes"], only=~edited if live else None)
        return {
            "locked": [bool(x) for x in edited],
            "lock_residual": answer["lock_residual"],
            "rotated": [bool(x) for x in rotated],
            "max_gap": answer.get("max_gap"),
            # The backend names the joint that conflicts with which edit when the edits cannot all hold.
            "feasible": bool(answer.get("feasible", answer["lock_residual"] <= 1e-4)),
            "message": answer.get("message") or "",
        }

    fields = {
        "index": info["index"],
        "source_index": int(parent[build.PROP_PREFIX + "source_index"]),
        "locked": [bool(x) for x in edited],
        "excluded": [bool(x) for x in rotated],
        "keep_symmetry": keep_symmetry,
        "yaw": float(parent.rotation_euler[2]),  # the boxes' centres are turned by the fit's yaw
    }
    return Job(
        "keep_connected",
        fields,
        # The boxes before the edits give each edit's own change, which mirror partners copy.
        {"boxes": boxes, "reference": build.applied_boxes(parent)},
        finish=done,
        label="keeping parts connected",
        used={"keep_symmetry": keep_symmetry},
    )


def refit_job(context, parent=None, keep_edited: bool = True, refine_steps: int = 300) -> Job:
    """Rerun the deformation optimisation against the fit's target with the
    edited parts held (``keep_edited``). The finished job returns the parts
    held and the chamfer (x1e-2) after, and before and at the solve's start
    where the backend reports them."""
    parent = _parent(context, parent)
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    points = _target_points(context, info, "refitting")
    edited = build.note_edits(parent)
    boxes, _ = build.current_boxes(parent)
    locked = edited if keep_edited else np.zeros(len(boxes), bool)
    name = parent.name

    def done(context, answer):
        parent = _still_there(context, name)
        best = answer["candidates"][0]
        fitted = np.array([p["fitted_box"] for p in sorted(best["parts"], key=lambda p: p["index"])])
        build.apply_boxes(parent, fitted, only=~locked)  # the held parts are the user's, exactly
        _update_residuals(parent, best.get("residuals"))
        return {
            "locked": [bool(x) for x in locked],
            "chamfer_x100": best["measured_chamfer_x100"],
            "chamfer_before_x100": answer.get("chamfer_before_x100"),  # the boxes as the user left them
            "chamfer_start_x100": answer.get("chamfer_start_x100"),  # joints re-attached: where the solve starts
        }

    fields = {
        "index": info["index"],
        "checkpoint": info.get("checkpoint") or None,
        "source_index": int(parent[build.PROP_PREFIX + "source_index"]),
        "locked": [bool(x) for x in locked],
        "yaw": float(parent.rotation_euler[2]),
        # a scan is refitted from the side the fit judged it was seen from (None: a cloud from all around)
        "options": {"refine_steps": int(refine_steps), "viewpoint": _seen_from(info)},
    }
    return Job(
        "refit",
        fields,
        {"points": points, "boxes": boxes},
        finish=done,
        label="refitting",
        used={"keep_edited": keep_edited},
    )


def _seen_from(info: dict) -> list[float] | None:
    """The direction towards the scanner the fit judged (or was given) for its target, or None (a cloud from
    all around): a refit or a residual measure of a scan keeps to the side it saw."""
    return (info.get("view") or {}).get("direction")


def _target_points(context, info: dict, what: str) -> np.ndarray:
    """(N, 3) float32 points of the object a fit was made from (as the fit read them)."""
    target = info.get("target", {})
    if "object" not in target:
        raise RfitError(f"{what} needs a point cloud target; this fit was made from an image")
    obj = context.scene.objects.get(target["object"])
    if obj is None:
        raise RfitError(f"the target object '{target['object']}' is no longer in the scene")
    try:
        return targets.points_from_object(obj, context.evaluated_depsgraph_get()).astype(np.float32)
    except targets.TargetError as error:
        raise RfitError(str(error)) from error


def residuals_job(context, parent=None) -> Job:
    """Measure each part as it is now (edits included) against the fit's target and colour the parts by
    it (``build.show_residual``); no refit. The finished job returns the worst part and its residual."""
    parent = _parent(context, parent)
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    points = _target_points(context, info, "measuring residuals")
    boxes, _ = build.current_boxes(parent)
    name = parent.name

    def done(context, answer):
        parent = _still_there(context, name)
        build.set_residuals(parent, answer.header)
        return show_residuals(context, True, parent)

    fields = {
        "index": info["index"],
        "checkpoint": info.get("checkpoint") or None,
        "source_index": int(parent[build.PROP_PREFIX + "source_index"]),
        "yaw": float(parent.rotation_euler[2]),
        "viewpoint": _seen_from(info),  # a scan: only what its scanner saw counts
    }
    return Job("residuals", fields, {"points": points, "boxes": boxes}, finish=done, label="measuring the parts")


# -- synchronous forms (scripts) -----------------------------------------------------------------
def check_backend(context) -> dict:
    """Start the worker if needed and ask what it runs on."""
    return run(context, hello_job(context))


def index_library(context, directory: str, index: str = "") -> dict:
    """Index (or update the index of) a folder of models; returns the summary."""
    return run(context, index_job(context, directory, index))


def retrieve_and_fit(context, index: str = "", obj=None, image_path: str = "", **options):
    """Fit the object (or the image file) and build the best candidate; returns the parent empty."""
    target = "IMAGE" if image_path else "OBJECT"
    return run(context, fit_job(context, target=target, obj=obj, image_path=image_path, index=index, **options))


def use_candidate(context, rank: int, parent=None):
    """Replace the active fit by its candidate ``rank``; returns the new parent."""
    return run(context, candidate_job(context, rank, parent))


def enforce_connectivity(context, parent=None, keep_symmetry: bool = False) -> dict:
    return run(context, keep_connected_job(context, parent, keep_symmetry))


def refit(context, parent=None, keep_edited: bool = True, refine_steps: int = 300) -> dict:
    return run(context, refit_job(context, parent, keep_edited, refine_steps))


# -- local edits (no backend) ----------------------------------------------------------------------
def find_view(context):
    """The 3D viewport's ``region_3d`` the user looks through: the operator's own, else the largest 3D view
    of the window; None without one (a script in a ``bpy`` module)."""
    if getattr(context, "region_data", None) is not None and getattr(context.space_data, "type", "") == "VIEW_3D":
        return context.region_data
    screen = getattr(context, "screen", None)
    areas = [a for a in (screen.areas if screen is not None else []) if a.type == "VIEW_3D"]
    if not areas:
        return None
    return max(areas, key=lambda a: a.width * a.height).spaces.active.region_3d


def view_direction(region_3d) -> np.ndarray:
    """(3,) unit vector from what the viewport looks at towards its eye (world frame)."""
    rotation = np.array(region_3d.view_rotation.to_matrix(), dtype=np.float64)
    return rotation @ np.array([0.0, 0.0, 1.0])


def turn_to_view(context, parent=None, region_3d=None) -> dict:
    """Turn an image fit about its vertical so the viewport sees it from the side the image's camera saw
    it, and stand it where the viewport looks (its orbit point, resting at the 3D cursor's height).
    Upright: a camera above or below the viewport's height cannot be matched by turning (it is reported).
    Uses the fit's ``view`` (``FitResult.view``). Returns the turn (degrees) and both elevations."""
    parent = _parent(context, parent)
    info = json.loads(parent[build.PROP_PREFIX + "info"])
    view = info.get("view")
    if not view or not view.get("direction"):
        raise RfitError("the backend gave no camera view for this fit: it stays upright at the 3D cursor")
    region_3d = region_3d if region_3d is not None else find_view(context)
    if region_3d is None:
        raise RfitError("no 3D viewport to match: the fit stays upright at the 3D cursor")
    seen = np.asarray(view["direction"], dtype=np.float64)
    eye = view_direction(region_3d)
    if np.hypot(*seen[:2]) < 1e-6 or np.hypot(*eye[:2]) < 1e-6:
        raise RfitError("the image or the viewport looks straight down: there is no side to match")
    turn = float(np.arctan2(eye[1], eye[0]) - np.arctan2(seen[1], seen[0]))
    centre, size = build.fit_bounds(parent)
    target = np.array([*region_3d.view_location[:2], context.scene.cursor.location[2] + size[2] / 2])
    offset = target - centre
    candidates = json.loads(parent[build.PROP_PREFIX + "candidates"])
    for candidate in candidates:
        _move(candidate, offset, turn, centre)
    parent[build.PROP_PREFIX + "candidates"] = json.dumps(candidates)
    shown = candidates[int(parent[build.PROP_PREFIX + "rank"])]
    for obj in build.part_objects(parent):  # the parts keep their local transforms; their recorded boxes move
        part = next(p for p in shown["parts"] if p["index"] == obj[build.PROP_PREFIX + "part"])
        obj[build.PROP_PREFIX + "fitted_box"] = part["fitted_box"]
        obj[build.PROP_PREFIX + "original_box"] = part["original_box"]
    parent.location = shown["pivot"]
    parent.rotation_euler = (0.0, 0.0, float(shown["yaw"]))
    info["placed_at"] = [float(v) for v in target - [0.0, 0.0, size[2] / 2]]
    turned = rotation_z(turn) @ seen  # the camera turns with the fit: pressed again, nothing turns
    info["view"] = {
        **view,
        "direction": turned.tolist(),
        "azimuth_deg": float(np.degrees(np.arctan2(turned[1], turned[0]))),
    }
    parent[build.PROP_PREFIX + "info"] = json.dumps(info)
    for obj in build.part_objects(parent):
        obj[build.PROP_PREFIX + "applied_box"] = [float(v) for v in build.box_of(obj, parent)]
    elevation = float(np.degrees(np.arcsin(np.clip(eye[2], -1, 1))))
    return {
        "turn_deg": float(np.degrees(turn)),
        "image_elevation_deg": view.get("elevation_deg"),
        "view_elevation_deg": elevation,
    }


def measure_residuals(context, parent=None) -> dict:
    """Measure the parts as they are now and show them in residual colours (waits; see ``residuals_job``)."""
    return run(context, residuals_job(context, parent))


def show_residuals(context, show: bool = True, parent=None) -> dict:
    """Colour the fit's parts by their last measured residual (from the fit, a Refit or
    ``measure_residuals``) or give them back their own colours; no backend call.
    Returns the worst part and its residual (x1e-2)."""
    parent = _parent(context, parent)
    parts = build.part_objects(parent)
    residuals = [build.part_residual(obj) for obj in parts]
    if show and all(r is None for r in residuals):
        raise RfitError("this fit has no residuals: an image has no target points to measure against")
    for obj in parts:
        build.show_residual(obj, show)
    context.scene.rfit.show_residuals = bool(show)
    measured = [(r, k) for k, r in enumerate(residuals) if r is not None]
    worst = max(measured) if measured else (None, None)
    return {"shown": bool(show), "worst_part": worst[1], "worst_x100": worst[0]}


def _keep_residual_view(context, parent) -> None:
    """A new fit (or candidate) is shown as the last one was: in residual colours when they were on."""
    parts = build.part_objects(parent)
    if context.scene.rfit.show_residuals and any(build.part_residual(o) is not None for o in parts):
        for obj in parts:
            build.show_residual(obj, True)


def _update_residuals(parent, residuals: dict | None) -> None:
    """The refit's residuals: on the parts (recoloured where shown) and in the parent's candidate list."""
    build.set_residuals(parent, residuals)
    candidates = json.loads(parent[build.PROP_PREFIX + "candidates"])
    rank = int(parent[build.PROP_PREFIX + "rank"])
    if 0 <= rank < len(candidates):
        candidates[rank]["residuals"] = residuals
        parent[build.PROP_PREFIX + "candidates"] = json.dumps(candidates)


def reset_parts(context, parts=None) -> int:
    """Put parts (default: the selected part objects) back to the predicted
    boxes; they no longer count as edited."""
    parts = parts if parts is not None else [o for o in context.selected_objects if build.PROP_PREFIX + "part" in o]
    for obj in parts:
        parent = obj.parent
        obj.rotation_euler = (0.0, 0.0, 0.0)
        members = build.part_objects(parent)
        boxes, _ = build.current_boxes(parent)
        boxes[members.index(obj)] = np.asarray(obj[build.PROP_PREFIX + "fitted_box"], dtype=np.float64)
        build.apply_boxes(parent, boxes, only=np.array([m == obj for m in members]), edited=False)
    return len(parts)


def apply_fit(context, parent=None) -> int:
    """Bake every part's scale into its mesh and drop the add-on's properties
    (edited flags included): plain objects from here on. Returns the number of parts baked."""
    parent = _parent(context, parent)
    parts = build.part_objects(parent)
    for obj in parts:
        build.show_residual(obj, False)  # plain objects keep the model's own colours
        scale = np.array(obj.scale, dtype=np.float64)
        co = np.empty(len(obj.data.vertices) * 3, np.float32)
        obj.data.vertices.foreach_get("co", co)
        obj.data.vertices.foreach_set("co", (co.reshape(-1, 3) * scale).astype(np.float32).reshape(-1))
        obj.data.update()
        obj.scale = (1.0, 1.0, 1.0)
    for obj in [parent, *parts]:
        for key in [k for k in obj.keys() if k.startswith(build.PROP_PREFIX)]:
            del obj[key]
    return len(parts)
