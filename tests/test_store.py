"""Parquet parts, manifests, verification: the output contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from lgd_ray.core.errors import UserError
from lgd_ray.core.sampler import Sample
from lgd_ray.core.work import WorkItem
from lgd_ray.engine.store import SCHEMA, OutputDir, StageParams


def _samples(stage: int, n: int) -> list[Sample]:
    rng = np.random.default_rng(stage)
    return [Sample(WorkItem(stage, i % 3, i // 3), 1, 1000 + i, rng.integers(0, 255, (1, 8, 8), dtype=np.uint8),
                   rng.standard_normal((1, 8, 8)).astype(np.float16), 0.5, 1.0, 1.0) for i in range(n)]


PARAMS = StageParams(["a", "b", "c"], [5, 6, 7], 3, 0.1, 0.5, 0.0)


def test_part_schema_readable_everywhere(tmp_path):
    out = OutputDir(str(tmp_path / "run"))
    info = out.write_part(0, 0, _samples(0, 6), PARAMS)
    path = tmp_path / "run" / "data" / "stage-000" / info["file"]
    table = pq.read_table(path)
    assert table.schema.remove_metadata() == SCHEMA
    assert table.schema.metadata[b"latent_shape"] == b"1,8,8"
    # the Hugging Face features, as `datasets` writes them: image an Image, label a ClassLabel of the run's classes
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"} and features["label"] == {"names": ["a", "b", "c"], "_type": "ClassLabel"}
    assert features["latent"] == {"dtype": "binary", "_type": "Value"} and set(features) == set(SCHEMA.names)
    df = pd.read_parquet(path)
    assert list(df["class_id"]) == ["a", "b", "c"] * 2 and list(df["generator_class"]) == [5, 6, 7] * 2
    assert df["image"][0]["path"] == "stage=000/a/00000.png"
    latent = np.frombuffer(df["latent"][0], dtype=np.float16).reshape(1, 8, 8)
    assert np.array_equal(latent, _samples(0, 6)[0].latent)
    images = out.read_stages([0]) if out.manifest(0) else None
    assert images is None  # no manifest yet: the stage is not complete


def test_manifest_verify_and_read(tmp_path):
    out = OutputDir(str(tmp_path / "run"))
    parts = [out.write_part(0, i, _samples(0, 6)[3 * i:3 * i + 3], PARAMS) for i in range(2)]
    out.write_manifest(0, parts, {"config_hash": "x"})
    assert out.verify_stage(0) == []
    data = out.read_stages([0], class_ids=["a", "b", "c"])
    assert len(data) == 6 and data.images.shape == (6, 1, 8, 8)
    assert np.array_equal(data.images[0].numpy(), _samples(0, 6)[0].image)
    # corrupt one part: verify names it, part_info refuses it
    p = tmp_path / "run" / "data" / "stage-000" / "part-00001.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    problems = out.verify_stage(0)
    assert len(problems) == 1 and "part-00001" in problems[0]
    assert out.part_info(0, 1, [(0, 1), (1, 1), (2, 1)]) is None
    assert out.part_info(0, 0, [(0, 0), (1, 0), (2, 0)]) == parts[0]
    # a part whose rows are not the expected ones is not accepted either
    assert out.part_info(0, 0, [(0, 0), (1, 0)]) is None


def test_atomic_write_leaves_no_temp_files(tmp_path):
    out = OutputDir(str(tmp_path / "run"))
    out.write_text("a/b.txt", "one")
    out.write_text("a/b.txt", "two")
    assert [f.name for f in (tmp_path / "run" / "a").iterdir()] == ["b.txt"]
    assert out.read_bytes("a/b.txt") == b"two"


def test_output_of_the_old_layout_is_refused_with_the_move(tmp_path):
    """Parts written beside config.json (stage=NNN/, before data/stage-NNN/) are not silently resampled:
    reading or resuming names the move that makes the output current."""
    out = OutputDir(str(tmp_path / "run"))
    out.write_manifest(0, [out.write_part(0, 0, _samples(0, 3), PARAMS)], {"config_hash": "x"})
    assert out.stages_on_disk() == [0] and out.manifest(0)["rows"] == 3
    shutil.move(str(tmp_path / "run" / "data" / "stage-000"), str(tmp_path / "run" / "stage=000"))
    for call in (out.stages_on_disk, lambda: out.manifest(0)):
        with pytest.raises(UserError) as e:
            call()
        assert e.value.field == "out" and "data/stage-000" in str(e.value) and "mv" in str(e.value)


# --- writes that survive a killed or failing writer ---------------------------------------------------


def test_temp_files_are_hidden_and_a_killed_writers_temp_is_never_data(tmp_path, monkeypatch):
    """A write goes through `.<name>.tmp-<hex>` (skipped by pyarrow, pandas, Ray Data, `datasets`); the
    temp a SIGKILLed writer leaves is never read or verified as a part, and goes with the manifest."""
    import os

    from lgd_ray.core.data import read_parquet_images
    from lgd_ray.engine.store import is_temp, temp_path

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(a), real_replace(a, b)))
    out = OutputDir(str(tmp_path / "run"))
    parts = [out.write_part(0, i, _samples(0, 6)[3 * i:3 * i + 3], PARAMS) for i in range(2)]
    assert renamed and all(os.path.basename(t).startswith(".") and is_temp(os.path.basename(t)) for t in renamed)
    folder = tmp_path / "run" / "data" / "stage-000"
    # what a writer killed between write and rename leaves: a hidden temp (truncated Parquet bytes)
    torn = folder / os.path.basename(temp_path(str(folder / "part-00002.parquet")))
    torn.write_bytes((folder / "part-00000.parquet").read_bytes()[:-40])
    (folder / ".part-00003.parquet").write_bytes(b"not data either")  # hidden: no reader takes it
    (folder / ".keep").write_text("")  # not a temp: stays
    assert pq.read_table(folder).num_rows == 6 and len(pd.read_parquet(folder)) == 6
    assert len(read_parquet_images(str(folder), class_ids=["a", "b", "c"])) == 6
    out.write_manifest(0, parts, {"config_hash": "x"})
    assert out.verify_stage(0) == []
    assert sorted(f.name for f in folder.iterdir()) == [".keep", ".part-00003.parquet", "_manifest.json",
                                                        "part-00000.parquet", "part-00001.parquet"]


def test_metrics_lines_are_appended_in_place(tmp_path):
    """append_jsonl never rewrites the file: same inode, the earlier bytes kept, and a reader that has
    it open reads on into the new line (a rewrite by rename would leave it on the old file)."""
    import os

    out = OutputDir(str(tmp_path / "run"))
    out.append_jsonl("metrics.jsonl", {"event": "a"})
    path = tmp_path / "run" / "metrics.jsonl"
    before, inode = path.read_bytes(), path.stat().st_ino
    with open(path, "rb") as reader:
        assert reader.read() == before
        out.append_jsonl("metrics.jsonl", {"event": "b", "stage": 1})
        assert reader.read() == b'{"event": "b", "stage": 1}\n'
    assert path.stat().st_ino == inode and path.read_bytes().startswith(before)
    with open(path, "ab") as f:  # the torn last line of a killed writer
        f.write(b'{"event": "c", "sta')
    out.append_jsonl("metrics.jsonl", {"event": "d"})
    assert path.read_bytes().splitlines()[-2:] == [b'{"event": "c", "sta', b'{"event": "d"}']
    assert os.stat(path).st_ino == inode


class _Upload:
    """An object store's upload stream: it buffers, and closing it commits what it holds (as an S3
    stream does, also after an error); past the store's `fail_after` bytes a write raises, as a dropped
    connection does."""

    def __init__(self, store: _ObjectStore, path: str):
        self.store, self.path, self.buf, self.closed = store, path, bytearray(), False

    def write(self, data) -> int:
        data = bytes(data)
        limit = self.store.fail_after
        if limit is not None and len(self.buf) + len(data) > limit:
            self.buf += data[:max(0, limit - len(self.buf))]
            raise OSError("connection reset by peer")
        self.buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.store.objects[self.path] = bytes(self.buf)
            self.store.events.append(("commit", self.path))


class _ObjectStore(pafs.FileSystemHandler):
    """An in-memory object store behind pyarrow.fs.PyFileSystem: flat keys, implicit folders."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.events: list[tuple] = []
        self.fail_after: int | None = None

    def get_type_name(self):
        return "test-object-store"

    def normalize_path(self, path):
        return path

    def _info(self, path):
        if path in self.objects:
            return pafs.FileInfo(path, pafs.FileType.File, size=len(self.objects[path]))
        if any(k.startswith(path.rstrip("/") + "/") for k in self.objects):
            return pafs.FileInfo(path, pafs.FileType.Directory)
        return pafs.FileInfo(path, pafs.FileType.NotFound)

    def get_file_info(self, paths):
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector):
        base = selector.base_dir.rstrip("/") + "/"
        found = {}
        for k in self.objects:
            if k.startswith(base):
                first = k[len(base):].split("/")[0]
                found[base + first] = self._info(base + first)
        return list(found.values())

    def create_dir(self, path, recursive):
        pass  # folders are implicit, as on S3

    def delete_dir(self, path):
        self.delete_dir_contents(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        for k in [k for k in self.objects if k.startswith(path.rstrip("/") + "/")]:
            del self.objects[k]

    def delete_root_dir_contents(self):
        self.objects.clear()

    def delete_file(self, path):
        del self.objects[path]
        self.events.append(("delete", path))

    def move(self, src, dest):
        self.objects[dest] = self.objects.pop(src)
        self.events.append(("move", src, dest))

    def copy_file(self, src, dest):
        self.objects[dest] = self.objects[src]

    def open_input_stream(self, path):
        return pa.BufferReader(self.objects[path])

    def open_input_file(self, path):
        return pa.BufferReader(self.objects[path])

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_Upload(self, path), mode="w")

    def open_append_stream(self, path, metadata):
        raise NotImplementedError("objects cannot be appended to")


def test_object_store_write_that_fails_midway_commits_nothing():
    """On an object store a write that fails mid-stream leaves the old object (or none) at its key and
    no visible object: streaming to the key itself would commit the partial bytes when the stream closes."""
    store = _ObjectStore()
    out = OutputDir("bucket/run", filesystem=pafs.PyFileSystem(store))
    old_key, new_key = "bucket/run/data/stage-000/part-00000.parquet", "bucket/run/data/stage-000/part-00001.parquet"
    out.write_bytes("data/stage-000/part-00000.parquet", b"old part")
    store.fail_after = 100
    for rel in ("data/stage-000/part-00000.parquet", "data/stage-000/part-00001.parquet"):
        with pytest.raises(OSError, match="connection reset"):
            out.write_bytes(rel, b"x" * 1000)
    assert store.objects == {old_key: b"old part"}  # the partial uploads went to temps, deleted since
    assert all(e[0] != "commit" or e[1].rsplit("/", 1)[1].startswith(".") for e in store.events[1:])
    store.fail_after = None
    out.write_bytes("data/stage-000/part-00001.parquet", b"y" * 1000)
    assert store.objects == {old_key: b"old part", new_key: b"y" * 1000}
    # metrics.jsonl cannot be appended to there: rewritten whole through the same atomic write
    out.append_jsonl("metrics.jsonl", {"event": "a"})
    out.append_jsonl("metrics.jsonl", {"event": "b"})
    assert out.read_bytes("metrics.jsonl") == b'{"event": "a"}\n{"event": "b"}\n'
    store.fail_after = 5
    with pytest.raises(OSError):
        out.append_jsonl("metrics.jsonl", {"event": "c"})
    assert out.read_bytes("metrics.jsonl") == b'{"event": "a"}\n{"event": "b"}\n'
