"""The index on disk: incremental updates, bad files, atomic replacement."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import chair_parts, write_scene, write_single_mesh
from test_partnet import write_partnet

import backend.library.index as index_module
from backend.library import IndexOptions, LibraryIndexError, build_index, load_index


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "library"
    write_scene(chair_parts(), root / "chairs" / "plain.glb")
    write_scene(chair_parts(screws=8), root / "chairs" / "screwed.obj")
    write_single_mesh(chair_parts(arms=True), root / "armchair.ply")
    write_partnet(root / "partnet" / "1234", chair_parts())
    (root / "corrupt.glb").write_bytes(b"glTF\x02\x00\x00\x00nonsense")
    (root / "empty.stl").write_bytes(b"")
    (root / "nan.obj").write_text("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (root / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3\nf 2 4 3\n")
    (root / "notes.txt").write_text("not a model")
    return root


def manifest(index_dir):
    return json.loads((index_dir / "manifest.json").read_text())


def test_index_holds_sources_and_skips_with_reasons(library, tmp_path):
    out = tmp_path / "index"
    report = build_index(library, out)
    index = load_index(out)
    assert [s.path for s in index.sources] == ["armchair.ply", "chairs/plain.glb", "chairs/screwed.obj", "partnet/1234"]
    reasons = {s.path: s.reason for s in index.skipped}
    assert set(reasons) == {"corrupt.glb", "empty.stl", "nan.obj", "flat.obj"}
    assert "non-finite" in reasons["nan.obj"] and "flat" in reasons["flat.obj"]
    assert sorted(report.added) == [s.path for s in index.sources]
    for i, record in enumerate(index.sources):
        source = index.load_source(i)
        assert source.n_parts == record.n_parts >= 5
        assert source.points.shape == (2048, 3) and source.point_labels.shape == (2048,)
        assert source.null_basis.shape[0] == 6 * source.n_parts
    # npz files load without pickle
    for f in (out / "sources").iterdir():
        np.load(f, allow_pickle=False).close()


def test_rerun_processes_only_what_changed(library, tmp_path, monkeypatch):
    out = tmp_path / "index"
    build_index(library, out)
    arrays_before = {s["path"]: s["arrays"] for s in manifest(out)["sources"]}
    calls = []
    original = index_module.source_from_entry
    monkeypatch.setattr(index_module, "source_from_entry", lambda e, *a: calls.append(e.path) or original(e, *a))

    report = build_index(library, out)
    assert calls == [] and len(report.unchanged) == 4 and report.added == [] and len(report.skipped) == 4

    os.utime(library / "chairs" / "plain.glb")  # touched, same bytes: hashed, not rebuilt
    write_scene(chair_parts(slats=5), library / "chairs" / "screwed.obj")  # changed
    write_scene(chair_parts(), library / "new.glb")  # added
    (library / "armchair.ply").unlink()  # removed
    report = build_index(library, out)
    assert sorted(calls) == ["chairs/screwed.obj", "new.glb"]
    assert (
        report.updated == ["chairs/screwed.obj"] and report.added == ["new.glb"] and report.removed == ["armchair.ply"]
    )
    rows = {s["path"]: s for s in manifest(out)["sources"]}
    assert rows["chairs/plain.glb"]["arrays"] == arrays_before["chairs/plain.glb"]
    assert rows["chairs/screwed.obj"]["arrays"] != arrays_before["chairs/screwed.obj"]
    # nothing stale is left on disk
    assert {f.name for f in (out / "sources").iterdir()} == {os.path.basename(r["arrays"]) for r in rows.values()}


def test_changed_options_rebuild_everything(library, tmp_path):
    out = tmp_path / "index"
    build_index(library, out)
    report = build_index(library, out, IndexOptions(max_parts=3))
    assert len(report.updated) == 4
    assert max(s.n_parts for s in load_index(out).sources) == 3
    assert load_index(out).options.max_parts == 3
    assert len(build_index(library, out).unchanged) == 4  # the new options are remembered


def test_same_file_same_samples(library, tmp_path):
    shutil.copy(library / "chairs" / "plain.glb", library / "copy.glb")
    build_index(library, tmp_path / "a")
    index = load_index(tmp_path / "a")
    paths = [s.path for s in index.sources]
    a = index.load_source(paths.index("copy.glb"))
    b = index.load_source(paths.index("chairs/plain.glb"))
    np.testing.assert_array_equal(a.points, b.points)
    build_index(library, tmp_path / "b")
    again = load_index(tmp_path / "b").load_source(paths.index("copy.glb"))
    np.testing.assert_array_equal(a.points, again.points)


def test_interrupted_run_leaves_previous_index_intact(library, tmp_path, monkeypatch):
    out = tmp_path / "index"
    build_index(library, out)
    before = (out / "manifest.json").read_bytes()
    write_scene(chair_parts(slats=4), library / "chairs" / "plain.glb")
    write_scene(chair_parts(), library / "another.glb")
    seen = []

    def crash_on_second(entry, *args):
        seen.append(entry.path)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return original(entry, *args)

    original = index_module.source_from_entry
    monkeypatch.setattr(index_module, "source_from_entry", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_index(library, out)
    assert (out / "manifest.json").read_bytes() == before
    index = load_index(out)
    for i in range(len(index)):
        index.load_source(i)  # every source the manifest names is still there
    monkeypatch.setattr(index_module, "source_from_entry", original)
    report = build_index(library, out)
    assert report.added == ["another.glb"] and report.updated == ["chairs/plain.glb"]


def test_symlinks_never_escape(library, tmp_path):
    outside = tmp_path / "outside"
    write_scene(chair_parts(), outside / "secret.glb")
    (library / "link.glb").symlink_to(outside / "secret.glb")
    (library / "linkdir").symlink_to(outside, target_is_directory=True)
    (library / "inner.glb").symlink_to(library / "chairs" / "plain.glb")
    build_index(library, tmp_path / "index")
    index = load_index(tmp_path / "index")
    reasons = {s.path: s.reason for s in index.skipped}
    assert "outside the library" in reasons["link.glb"]
    assert "not followed" in reasons["linkdir"]
    assert "inner.glb" in [s.path for s in index.sources]
    assert not any("secret" in s.path for s in index.sources)


def test_parallel_workers_give_the_same_index(library, tmp_path):
    build_index(library, tmp_path / "serial", jobs=1)
    build_index(library, tmp_path / "parallel", jobs=2)
    assert manifest(tmp_path / "serial")["sources"] == manifest(tmp_path / "parallel")["sources"]


def test_index_of_another_library_and_bad_manifests(library, tmp_path):
    out = tmp_path / "index"
    build_index(library, out)
    other = tmp_path / "other"
    write_scene(chair_parts(), other / "c.glb")
    with pytest.raises(LibraryIndexError, match="choose another"):
        build_index(other, out)
    with pytest.raises(LibraryIndexError, match="no library index"):
        load_index(tmp_path / "nowhere")
    (out / "manifest.json").write_text("{broken")
    with pytest.raises(LibraryIndexError, match="not a readable.*--rebuild"):
        load_index(out)
    with pytest.raises(NotADirectoryError):
        build_index(tmp_path / "missing", tmp_path / "i2")


def test_concurrent_run_is_refused(library, tmp_path):
    out = tmp_path / "index"
    build_index(library, out)
    with index_module._exclusive(out):
        with pytest.raises(LibraryIndexError, match="another indexing run"):
            build_index(library, out)


def test_a_model_whose_thumbnail_cannot_be_drawn_is_still_indexed(library, tmp_path, monkeypatch):
    """Drawing the picture fails (odd geometry, a renderer bug): the model is indexed without one (the worker draws
    the fit's thumbnail instead) rather than skipped."""

    def broken(*args, **kwargs):
        raise ValueError("cannot draw this")

    monkeypatch.setattr(index_module, "model_thumbnail", broken)
    report = build_index(library, tmp_path / "index", jobs=1)
    assert sorted(report.added) == ["armchair.ply", "chairs/plain.glb", "chairs/screwed.obj", "partnet/1234"]
    assert not any("draw" in s.reason for s in report.skipped), report.skipped  # only the broken files
    index = load_index(tmp_path / "index")
    assert len(index) == 4 and all(s.thumbnail == 0 for s in index.sources)
    assert index.thumbnail(0, index_module.THUMBNAIL_SIZE) is None


def test_thumbnails_are_drawn_at_index_time_and_no_fit_draws_them(library, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import backend.export as export
    from backend.worker import Worker

    out = tmp_path / "index"
    build_index(library, out)
    index = load_index(out)
    size = index_module.THUMBNAIL_SIZE
    pictures = [index.thumbnail(i, size) for i in range(len(index))]
    for record, picture in zip(index.sources, pictures):
        assert record.thumbnail == size and picture.shape == (size, size, 3) and picture.dtype == np.uint8
        assert (np.abs(picture.astype(int) - 41).sum(axis=2) > 30).mean() > 0.05, record.path  # the model shows
    plain = [s.path for s in index.sources].index("chairs/plain.glb")
    assert not np.array_equal(pictures[plain], pictures[plain - 1])
    # the worker sends the stored pictures: nothing is drawn per fit
    monkeypatch.setattr(export, "render_thumbnail", lambda *a: pytest.fail("a thumbnail was drawn during a fit"))
    candidates = [SimpleNamespace(rank=r, source_index=i) for r, i in enumerate((plain, 0))]
    sent = Worker.thumbnails(index, candidates, size, lambda *a: None)
    assert np.array_equal(sent["thumbnail0"], pictures[plain]) and np.array_equal(sent["thumbnail1"], pictures[0])
    assert index.thumbnail(plain, 64) is None  # another size: the worker draws that one (fallback)
    monkeypatch.undo()
    # an index from before thumbnails: its rows are rebuilt once by the next run, and then kept
    data = manifest(out)
    for row in data["sources"]:
        del row["thumbnail"]
    (out / "manifest.json").write_text(json.dumps(data))
    assert load_index(out).thumbnail(plain, size) is None
    report = build_index(library, out)
    assert sorted(report.updated) == sorted(s.path for s in index.sources), report.summary()
    assert np.array_equal(load_index(out).thumbnail(plain, size), pictures[plain])
    assert build_index(library, out).unchanged and not build_index(library, out).updated


# -- the silhouette bank (image fits) ----------------------------------------------------------------


def _fitter_bank(out, monkeypatch):
    """The bank as the fitter opens it (its own samples, ``SilhouetteBank.cached``), failing if it had to build."""
    from backend.model.sources import stack_sources
    from backend.silhouettes import SilhouetteBank

    index = load_index(out)
    sources = stack_sources([index.load_source(i) for i in range(len(index))])
    with monkeypatch.context() as patch:
        patch.setattr(SilhouetteBank, "build", lambda *a, **k: pytest.fail("the fit had to build the silhouettes"))
        return sources, SilhouetteBank.cached(sources.points, out)


def test_silhouettes_are_stored_at_index_time_and_updated_only_where_the_library_changed(
    library, tmp_path, monkeypatch
):
    """Indexing stores the silhouettes image fits rank by, as the fitter would make them from its own samples;
    a re-run projects only new or changed models and leaves the file alone when nothing changed."""
    from backend import silhouette_bank
    from backend.silhouettes import ViewGrid, pack, silhouettes

    out = tmp_path / "index"
    report = build_index(library, out)
    assert report.silhouettes == "" and "silhouettes" not in report.summary()
    (bank,) = out.glob("silhouettes-*.npz")
    sources, loaded = _fitter_bank(out, monkeypatch)
    assert torch_equal(loaded.bits, pack(silhouettes(sources.points[:, :1024], ViewGrid().angles())))
    written = bank.stat().st_mtime_ns

    projected = []
    original = silhouette_bank.bank_bits
    monkeypatch.setattr(silhouette_bank, "bank_bits", lambda p, *a, **k: projected.append(len(p)) or original(p))
    build_index(library, out)
    assert projected == [] and bank.stat().st_mtime_ns == written  # nothing changed: not even read again

    write_scene(chair_parts(arms=True), library / "chairs" / "plain.glb")  # one model changed
    (library / "armchair.ply").unlink()  # one removed
    report = build_index(library, out)
    assert report.updated == ["chairs/plain.glb"] and report.removed == ["armchair.ply"]
    assert projected == [1] and not bank.exists()  # only the changed model projected; the stale bank dropped
    sources, loaded = _fitter_bank(out, monkeypatch)
    assert len(loaded) == 3 == len(sources)
    assert torch_equal(loaded.bits, pack(silhouettes(sources.points[:, :1024], ViewGrid().angles())))


def test_silhouettes_that_cannot_be_stored_never_fail_indexing(library, tmp_path, monkeypatch):
    from backend import silhouette_bank
    from backend.silhouettes import SilhouetteBank

    def broken(*args, **kwargs):
        raise MemoryError("no room for silhouettes")

    monkeypatch.setattr(silhouette_bank, "bank_bits", broken)
    out = tmp_path / "index"
    report = build_index(library, out)
    assert len(report.added) == 4 and len(load_index(out)) == 4
    assert "no room for silhouettes" in report.summary() and "first image fit" in report.summary()
    assert list(out.glob("silhouettes-*.npz")) == []
    monkeypatch.undo()
    from backend.model.sources import stack_sources

    index = load_index(out)
    points = stack_sources([index.load_source(i) for i in range(len(index))]).points
    assert len(SilhouetteBank.cached(points, out)) == 4  # the fit builds them as before
    assert len(list(out.glob("silhouettes-*.npz"))) == 1


def torch_equal(a, b) -> bool:
    return bool((a.cpu() == b.cpu()).all()) and a.shape == b.shape


def test_indexing_with_silhouettes_never_imports_torch(library, tmp_path):
    """Importing torch costs more than a hundred meshes' silhouettes: the indexer stores them with numpy."""
    import subprocess
    import sys

    code = (
        "import sys; from backend.library import build_index; "
        f"r = build_index({str(library)!r}, {str(tmp_path / 'index')!r}); "
        "assert not r.silhouettes, r.summary(); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert len(list((tmp_path / "index").glob("silhouettes-*.npz"))) == 1
