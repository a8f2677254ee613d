"""Indexing a personal model library into deformable, part-structured sources.

The scriptable API used by the CLI, the add-on's worker and training::

    from backend.library import IndexOptions, build_index, load_index

    report = build_index("~/models", "~/models.rfit", IndexOptions(max_parts=16))
    index = load_index("~/models.rfit")
    source = index.load_source(0)   # boxes, joints, null-space basis, samples
"""

from backend.library.index import (
    IndexReport,
    LibraryIndex,
    LibraryIndexError,
    SkippedRecord,
    SourceRecord,
    build_index,
    load_index,
)
from backend.library.loading import LoadedModel, Piece, UnreadableModel, load_model
from backend.library.source import IndexOptions, Source, build_source

__all__ = [
    "IndexOptions",
    "IndexReport",
    "LibraryIndex",
    "LibraryIndexError",
    "LoadedModel",
    "Piece",
    "SkippedRecord",
    "Source",
    "SourceRecord",
    "UnreadableModel",
    "build_index",
    "build_source",
    "load_index",
    "load_model",
]
