"""Parquet parts, manifests, verification: the output contract."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
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
