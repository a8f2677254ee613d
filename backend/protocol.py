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
"""

from __future__ import annotations

import io
import json
import struct
from typing import BinaryIO

import numpy as np

# The frame convention of the boxes on the wire; the add-on reads it from here.
from .geometry.frames import rotation_z  # noqa: F401

PROTOCOL_VERSION = 1
MAGIC = b"RFIT"
MAX_HEADER_BYTES = 16 << 20
MAX_ARRAY_BYTES = 1 << 31

REQUESTS = ("hello", "index_library", "fit", "refit", "keep_connected", "part_meshes", "cancel", "shutdown")
RESPONSES = ("progress", "result", "error")

# Fields each request type must carry (beyond protocol, id, type).
REQUIRED = {
    "hello": (),
    "index_library": ("library", "index"),
    "fit": ("index",),
    "refit": ("index", "source_index", "locked"),
    "keep_connected": ("index", "source_index", "locked"),
    "part_meshes": ("index", "source_index"),
    "cancel": ("target",),
    "shutdown": (),
}


class ProtocolError(RuntimeError):
    """A malformed or unexpected message; the stream cannot be trusted after it."""


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


def read_message(stream: BinaryIO) -> Message | None:
    """The next message, or ``None`` at a clean end of stream.

    Raises:
        ProtocolError: bad magic, oversized or malformed header, wrong
            version, or an array that is not a plain .npy.
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
    try:
        header = json.loads(_read_exactly(stream, length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from error
    if not isinstance(header, dict) or not {"protocol", "id", "type"} <= set(header):
        raise ProtocolError("header lacks protocol, id or type")
    if header["protocol"] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {header['protocol']}, expected {PROTOCOL_VERSION}: the add-on and its backend do not match"
        )
    arrays = {}
    for entry in header.pop("arrays", []):
        nbytes = int(entry["nbytes"])
        if not 0 < nbytes <= MAX_ARRAY_BYTES:
            raise ProtocolError(f"array {entry.get('name')!r} has an invalid size {nbytes}")
        try:
            arrays[str(entry["name"])] = np.load(io.BytesIO(_read_exactly(stream, nbytes)), allow_pickle=False)
        except ValueError as error:
            raise ProtocolError(f"array {entry.get('name')!r} is not a plain .npy: {error}") from error
    return Message(header, arrays)
