"""The wire protocol between the Blender add-on and the backend worker.

Shared by both sides, so it imports nothing but the standard library and
numpy (never torch, never bpy). The worker (``python -m backend serve``)
reads requests on stdin and writes responses on stdout; nothing listens
on a network port.

A message is one frame::

    b"RFIT" | u32 header length | header (UTF-8 JSON) | payload 0 | payload 1 | ...

The header's ``arrays`` lists ``{"name", "nbytes"}`` of the payloads, each
a ``.npy`` file image (loaded with ``allow_pickle=False``). Every header
carries ``protocol`` (the version), ``id`` (the request it belongs to) and
``type``.

Requests: ``hello``, ``index_library``, ``fit``, ``refit`` (refine a fit with
edited parts locked), ``keep_connected`` (re-attach joints around edited
parts), ``part_meshes`` (a source's geometry by part), ``cancel``, ``shutdown``.
Responses: ``progress`` (any number, while working), then exactly one of
``result`` or ``error`` per request.

Nothing a frame declares is trusted before it is checked: ``read_message``
checks the header (a JSON object of bounded depth, integer ``id``, known
``type``, this ``protocol``, payload sizes within the limits) and every
payload's ``.npy`` header against its bytes before making an array;
``validate_request`` checks each request's fields (types and ranges, the fit
options included). A frame that is read whole but invalid raises
``FrameError`` and the stream stays in step; anything else that is wrong
with the stream raises ``ProtocolError`` or ``EOFError``.
"""

from __future__ import annotations

import ast
import io
import json
import math
import struct
from typing import BinaryIO

import numpy as np

# The frame convention of the boxes on the wire; the add-on reads it from here.
from .geometry.frames import rotation_z  # noqa: F401

# A mesh target is sampled as the backend samples sources.
from .geometry.sampling import sample_surface  # noqa: F401

PROTOCOL_VERSION = 1
MAGIC = b"RFIT"
MAX_HEADER_BYTES = 16 << 20
MAX_ARRAY_BYTES = 1 << 31
MAX_FRAME_BYTES = 1 << 32
MAX_ARRAYS = 4096
MAX_DEPTH = 32  # nesting of a header's JSON
MAX_ID = (1 << 53) - 1  # exact in a JSON number

REQUESTS = (
    "hello",
    "index_library",
    "fit",
    "refit",
    "keep_connected",
    "residuals",
    "part_meshes",
    "cancel",
    "shutdown",
)
RESPONSES = ("progress", "result", "error")

# Fields each request type must carry (beyond protocol, id, type).
REQUIRED = {
    "hello": (),
    "index_library": ("library", "index"),
    "fit": ("index",),
    "refit": ("index", "source_index", "locked"),
    "keep_connected": ("index", "source_index", "locked"),
    "residuals": ("index", "source_index"),
    "part_meshes": ("index", "source_index"),
    "cancel": ("target",),
    "shutdown": (),
}

# Bounds of the fit options, for the worker and the command line alike.
FIT_OPTION_BOUNDS = {
    "top_k": (1, 100),
    "yaw_search": (1, 36),
    "rerank_pool": (1, 1000),
    "refine_steps": (0, 100_000),
    "refine_seconds": (0.0, 600.0),
    "symmetry_weight": (0.0, 1000.0),
    "size_weight": (0.0, 1000.0),
}


class ProtocolError(RuntimeError):
    """A malformed or unexpected message; the stream cannot be trusted after it."""


class FrameError(ProtocolError):
    """A frame read whole whose content is invalid: the stream is still in step, so the
    request gets an error answer and the next one is served. ``request_id`` is the
    frame's id where it could be read, else -1."""

    def __init__(self, message: str, request_id: int = -1):
        super().__init__(message)
        self.request_id = request_id


class Message:
    """A decoded frame: its JSON header and its named arrays."""

    def __init__(self, header: dict, arrays: dict[str, np.ndarray] | None = None):
        self.header = header
        self.arrays = arrays or {}

    @property
    def type(self) -> str:
        return self.header["type"]

    @property
    def id(self) -> int:
        return self.header["id"]

    def __getitem__(self, key: str):
        return self.header[key]

    def get(self, key: str, default=None):
        return self.header.get(key, default)

    def __repr__(self) -> str:
        return f"Message({self.header!r}, arrays={list(self.arrays)})"


def request(kind: str, request_id: int, arrays: dict[str, np.ndarray] | None = None, **fields) -> Message:
    """A request message, checked against the schema."""
    if kind not in REQUESTS:
        raise ProtocolError(f"unknown request type {kind!r}")
    missing = [f for f in REQUIRED[kind] if f not in fields]
    if missing:
        raise ProtocolError(f"{kind} request needs {missing}")
    return Message({"protocol": PROTOCOL_VERSION, "id": request_id, "type": kind, **fields}, arrays)


def response(kind: str, request_id: int, arrays: dict[str, np.ndarray] | None = None, **fields) -> Message:
    if kind not in RESPONSES:
        raise ProtocolError(f"unknown response type {kind!r}")
    return Message({"protocol": PROTOCOL_VERSION, "id": request_id, "type": kind, **fields}, arrays)


def encode(message: Message) -> bytes:
    """The frame bytes of a message."""
    payloads = []
    listing = []
    for name, array in message.arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        payloads.append(buffer.getvalue())
        listing.append({"name": name, "nbytes": len(payloads[-1])})
    header = json.dumps({**message.header, "arrays": listing}, allow_nan=False).encode("utf-8")
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(payloads)


def write_message(stream: BinaryIO, message: Message) -> None:
    stream.write(encode(message))
    stream.flush()


def _read_exactly(stream: BinaryIO, count: int) -> bytes:
    chunks = []
    remaining = count
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError("stream closed in the middle of a message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def npy_header(stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a .npy image, read without allocating its data.

    Raises:
        ValueError: not a .npy, or an object, structured or sub-array dtype (never unpickled).
    """
    # Parsed here rather than by numpy.lib.format, whose header filter runs the tokenizer: this runs
    # for every array on the add-on's reader thread inside Blender, where less Python work is safer.
    start = stream.tell()
    try:
        magic = stream.read(8)
        if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
            raise ValueError("no .npy magic string")
        version = (magic[6], magic[7])
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        size_format = "<H" if version == (1, 0) else "<I"
        size_bytes = stream.read(struct.calcsize(size_format))
        if len(size_bytes) < struct.calcsize(size_format):
            raise ValueError("the header is cut short")
        (length,) = struct.unpack(size_format, size_bytes)
        if length > 1 << 16:
            raise ValueError(f"a header of {length} bytes")
        text = stream.read(length)
        if len(text) < length:
            raise ValueError("the header is cut short")
        header = ast.literal_eval(text.decode("latin1"))
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ValueError("the header is not a .npy header")
        if not isinstance(header["descr"], str) or header["fortran_order"] is not False:
            raise ValueError(f"dtype {header['descr']!r}, fortran order {header['fortran_order']!r}")
        shape, dtype = header["shape"], np.dtype(header["descr"])
        if not isinstance(shape, tuple):
            raise ValueError(f"shape {shape!r}")
    except (ValueError, OSError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise ValueError(f"not a plain .npy array ({error})") from error
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "biufcU":
        raise ValueError(f"not a plain .npy array (dtype {dtype})")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"not a plain .npy array (shape {shape})")
    return tuple(shape), dtype, stream.tell() - start


def load_npy(data: bytes, name: str = "array") -> np.ndarray:
    """An array from the bytes of a .npy image whose header is checked first: the
    declared shape must match the bytes there are, so nothing large is allocated."""
    try:
        shape, dtype, offset = npy_header(io.BytesIO(data))
    except ValueError as error:
        raise ValueError(f"array {name!r} is {error}") from error
    count = 1
    for n in shape:
        count *= n
    if offset + count * dtype.itemsize != len(data):
        raise ValueError(
            f"array {name!r} declares shape {shape} of {dtype}, which does not match its {len(data)} bytes"
        )
    return np.load(io.BytesIO(data), allow_pickle=False)


def _depth(value, limit: int) -> int:
    """Nesting depth of decoded JSON, counting no further than ``limit`` (iterative: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -1 <= value <= MAX_ID


def _listing(header: dict) -> tuple[list[tuple[str, int]], str | None]:
    """``(name, nbytes)`` of the payloads a header announces, and a problem with their names.

    Raises:
        ValueError: the sizes cannot be known, or exceed the limits (the payloads cannot be skipped).
    """
    listing = header.pop("arrays", [])
    if not isinstance(listing, list) or len(listing) > MAX_ARRAYS:
        raise ValueError(f"'arrays' must be a list of at most {MAX_ARRAYS} entries")
    out, names, total, problem = [], set(), 0, None
    for entry in listing:
        if not isinstance(entry, dict):
            raise ValueError("each 'arrays' entry must be an object with 'name' and 'nbytes'")
        name, nbytes = entry.get("name"), entry.get("nbytes")
        if not is_id(nbytes) or not 0 < nbytes <= MAX_ARRAY_BYTES:
            raise ValueError(f"array {name!r} has an invalid size {nbytes!r}")
        total += nbytes
        if total > MAX_FRAME_BYTES:
            raise ValueError(f"the arrays add up to more than {MAX_FRAME_BYTES} bytes")
        if not isinstance(name, str) or not 0 < len(name) <= 200 or name in names:
            problem = problem or f"array name {str(name)[:80]!r} must be a new string of 1 to 200 characters"
        names.add(str(name))
        out.append((str(name), nbytes))
    return out, problem


def read_message(stream: BinaryIO) -> Message | None:
    """The next message, or ``None`` at a clean end of stream.

    The header is checked (JSON object of bounded depth, integer ``id``, known
    ``type``, this ``protocol``, payload sizes within the limits) before any
    payload is read, and every payload's ``.npy`` header before its array is
    made; nothing is ever unpickled.

    Raises:
        FrameError: an invalid frame that was read whole (the stream is still in step).
        ProtocolError: bad magic or an oversized header (the stream cannot be trusted).
        EOFError: the stream ended inside a message.
    """
    start = stream.read(len(MAGIC))
    if not start:
        return None
    if len(start) < len(MAGIC):
        start += _read_exactly(stream, len(MAGIC) - len(start))
    if start != MAGIC:
        raise ProtocolError(f"not a protocol frame (starts with {start!r}); is something else writing to stdout?")
    (length,) = struct.unpack("<I", _read_exactly(stream, 4))
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {length} bytes is larger than allowed")
    raw = _read_exactly(stream, length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FrameError(f"header is not JSON: {str(error)[:200]}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    request_id = header.get("id") if is_id(header.get("id")) else -1
    if _depth(header, MAX_DEPTH) > MAX_DEPTH:
        raise FrameError(f"header is nested deeper than {MAX_DEPTH} levels", request_id)
    try:
        listing, problem = _listing(header)
    except ValueError as error:
        raise FrameError(str(error), request_id) from None
    arrays, problems = {}, [problem] if problem else []
    for name, nbytes in listing:  # every payload is read, so the stream stays in step
        data = _read_exactly(stream, nbytes)
        try:
            arrays[name] = load_npy(data, name)
        except ValueError as error:
            problems.append(str(error))
    if not {"protocol", "id", "type"} <= set(header):
        raise FrameError("header lacks protocol, id or type", request_id)
    if header["protocol"] != PROTOCOL_VERSION:
        raise FrameError(
            f"protocol version {header['protocol']!r}, expected {PROTOCOL_VERSION}: "
            "the add-on and its backend do not match",
            request_id,
        )
    if not is_id(header["id"]):
        raise FrameError(f"'id' must be an integer from -1 to {MAX_ID}, got {header['id']!r}")
    if header["type"] not in REQUESTS + RESPONSES:
        raise FrameError(f"unknown message type {str(header['type'])[:100]!r}", request_id)
    if problems:
        raise FrameError("; ".join(problems), request_id)
    return Message(header, arrays)


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value, low: float, high: float) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    )


def _is_direction(value) -> bool:
    """A direction [x, y, z]: three finite numbers, not all zero."""
    return isinstance(value, list) and len(value) == 3 and all(_is_number(v, -1e6, 1e6) for v in value) and any(value)


def _bools(value) -> bool:
    return isinstance(value, list) and len(value) <= 4096 and all(isinstance(v, bool) for v in value)


# Field checks per request: (test, what the field must be). Unknown fields are ignored.
_STRING = (lambda v: isinstance(v, str) and 0 < len(v) <= 4096, "a path (a non-empty string)")
_OPTIONAL_STRING = (lambda v: v is None or (isinstance(v, str) and len(v) <= 4096), "a string or null")
_SOURCE_INDEX = (lambda v: _is_int(v, 0, MAX_ID), "a source number from 0")
_LOCKED = (_bools, "a list of true/false, one per part")
_OPTIONS = (lambda v: isinstance(v, dict), "an object")
FIELDS = {
    "index_library": {
        "library": _STRING,
        "index": _STRING,
        "options": (lambda v: v is None or isinstance(v, dict), "an object or null"),
        "jobs": (lambda v: _is_int(v, 1, 64), "an integer from 1 to 64"),
        "rebuild": (lambda v: isinstance(v, bool), "true or false"),
        "relocate": (lambda v: isinstance(v, bool), "true or false"),
    },
    "fit": {
        "index": _STRING,
        "checkpoint": _OPTIONAL_STRING,
        "options": _OPTIONS,
        "meshes_for": (
            lambda v: isinstance(v, list) and len(v) <= 100 and all(_is_int(r, 0, 99) for r in v),
            "a list of candidate ranks (0 to 99)",
        ),
        "thumbnails": (lambda v: v in (None, False, 0) or _is_int(v, 16, 512), "a size from 16 to 512, or 0"),
    },
    "refit": {
        "index": _STRING,
        "checkpoint": _OPTIONAL_STRING,
        "source_index": _SOURCE_INDEX,
        "locked": _LOCKED,
        "yaw": (lambda v: _is_number(v, -1e3, 1e3), "a finite angle in radians"),
        "options": _OPTIONS,
    },
    "keep_connected": {
        "index": _STRING,
        "source_index": _SOURCE_INDEX,
        "locked": _LOCKED,
        "excluded": (lambda v: v is None or _bools(v), "a list of true/false or null"),
        "keep_symmetry": (lambda v: isinstance(v, bool), "true or false"),
        "yaw": (lambda v: _is_number(v, -1e3, 1e3), "a finite angle in radians"),
    },
    "residuals": {
        "index": _STRING,
        "checkpoint": _OPTIONAL_STRING,
        "source_index": _SOURCE_INDEX,
        "yaw": (lambda v: _is_number(v, -1e3, 1e3), "a finite angle in radians"),
        "viewpoint": (lambda v: v is None or _is_direction(v), "null or the scanner's direction [x, y, z]"),
    },
    "part_meshes": {"index": _STRING, "source_index": _SOURCE_INDEX},
    "cancel": {"target": (lambda v: _is_int(v, 0, MAX_ID), "the id of a request")},
}


def validate_request(message: Message) -> None:
    """Check a request's fields against the schema (types and ranges) before it is queued.

    Raises:
        FrameError: with the request's id and the first problem found.
    """
    kind = message.type
    if kind not in REQUESTS:
        raise FrameError(f"{kind!r} is not a request type (expected one of {', '.join(REQUESTS)})", message.id)
    if message.id < 0:
        raise FrameError(f"a request id must be 0 or more, got {message.id}", message.id)
    missing = [f for f in REQUIRED[kind] if f not in message.header]
    if missing:
        raise FrameError(f"{kind} request needs {', '.join(missing)}", message.id)
    for name, (test, rule) in FIELDS.get(kind, {}).items():
        if name in message.header and not test(message.header[name]):
            raise FrameError(
                f"{kind} request: '{name}' must be {rule}, got {str(message.header[name])[:80]}", message.id
            )
    options = message.header.get("options")
    if kind in ("fit", "refit") and isinstance(options, dict):
        for name, value in options.items():
            if name == "refine":
                ok, rule = isinstance(value, bool), "true or false"
            elif name == "headings":
                ok, rule = value in ("auto", "fixed"), "'auto' or 'fixed'"
            elif name == "viewpoint":
                ok = value is None or value == "auto" or _is_direction(value)
                rule = "null (a cloud from all around), 'auto' (estimate it) or the scanner's direction [x, y, z]"
            elif name in FIT_OPTION_BOUNDS:
                low, high = FIT_OPTION_BOUNDS[name]
                ok = _is_int(value, low, high) if isinstance(low, int) else _is_number(value, low, high)
                rule = f"{'an integer' if isinstance(low, int) else 'a number'} from {low} to {high}"
            else:
                ok, rule = False, f"one of refine, headings, viewpoint, {', '.join(FIT_OPTION_BOUNDS)} (unknown option)"
            if not ok:
                raise FrameError(f"{kind} option '{name}' must be {rule}, got {str(value)[:80]}", message.id)
