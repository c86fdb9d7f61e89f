"""A finished output as the field's tools and the Hugging Face hub read it: the `data/` folder through
pyarrow, Ray Data and `datasets` (Image and ClassLabel features with no cast), the dataset card, and
`lgd-ray export` to an ImageNet-layout folder (torchvision's ImageFolder) or to Parquet; bad input refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from lgd_ray.cli import main
from lgd_ray.core.data import decode_png

CLASSES = [str(i) for i in range(10)]


def rows_by_key(folder: Path) -> dict[tuple[int, int, int], dict]:
    """(stage, label, slot) -> row (PNG bytes, class_id) over every part under `folder`."""
    table = pq.ParquetDataset(str(folder)).read(columns=["stage", "label", "slot", "class_id", "image"])
    return {(r["stage"], r["label"], r["slot"]): r for r in table.to_pylist()}


def card_header(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_data_folder_holds_only_parquet_or_hidden_files(baseline):
    found = [p.relative_to(Path(baseline) / "data") for p in (Path(baseline) / "data").rglob("*") if p.is_file()]
    assert found and all(p.suffix == ".parquet" or p.name.startswith(("_", ".")) for p in found), found
    assert not list(Path(baseline).glob("stage=*")), "parts must sit under data/, not beside config.json"


def test_pyarrow_and_pandas_read_the_output_as_one_dataset(baseline):
    import pandas as pd

    data = str(Path(baseline) / "data")
    for table in (pads.dataset(data).to_table(), pads.dataset(data, partitioning="hive").to_table(), pq.read_table(data)):
        assert table.num_rows == 20 and table.schema.field("stage").type == "int32"
        assert sorted(table.column("stage").to_pylist()) == [0] * 10 + [1] * 10
    df = pd.read_parquet(data)  # hive-style stage=NNN folders would make this fail (dictionary vs int32 `stage`)
    assert len(df) == 20 and sorted(df["stage"]) == [0] * 10 + [1] * 10 and list(df.columns) == pq.read_schema(
        next(Path(data).rglob("*.parquet"))).names


def test_ray_data_reads_the_output(baseline, ray_session):
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ds = ray.data.read_parquet(str(Path(baseline) / "data"))
    rows = ds.take_all()
    assert len(rows) == 20 and {r["stage"] for r in rows} == {0, 1}
    assert {(r["stage"], r["label"], r["slot"]) for r in rows} == set(rows_by_key(Path(baseline) / "data"))


def test_datasets_loads_image_and_classlabel_without_a_cast(baseline, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_files = datasets.load_dataset("parquet", data_files=str(Path(baseline) / "data" / "**" / "*.parquet"),
                                     split="train", cache_dir=str(tmp_path / "c1"))
    by_folder = datasets.load_dataset(baseline, split="train", cache_dir=str(tmp_path / "c2"))  # through the card
    for ds in (by_files, by_folder):
        assert isinstance(ds.features["image"], datasets.Image)
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == CLASSES and ds.num_rows == 20
        first = ds[0]
        assert isinstance(first["image"], Image.Image)
        want = rows_by_key(Path(baseline) / "data")[(first["stage"], first["label"], first["slot"])]
        assert np.array_equal(np.asarray(first["image"]), decode_png(want["image"]["bytes"])[0])
        assert ds.features["label"].int2str(first["label"]) == want["class_id"]
    # the card's features are the Parquet metadata's, to the letter
    header = card_header(Path(baseline) / "README.md")
    assert datasets.Features._from_yaml_list(header["dataset_info"]["features"]) == by_files.features


def test_every_finished_output_has_a_dataset_card(baseline, reference_file, tiny_generator_dir):
    from lgd_ray.engine.card import files_hash

    card = (Path(baseline) / "README.md").read_text()
    header = card_header(Path(baseline) / "README.md")
    assert "license" in header and "# license: set it" in card  # the field is there, for the user to set
    assert header["task_categories"] == ["image-classification"]
    assert header["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": ["data/stage-000/*.parquet", "data/stage-001/*.parquet"]}]}]
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": 20}]
    names = next(f for f in header["dataset_info"]["features"] if f["name"] == "label")["dtype"]["class_label"]["names"]
    assert names == {str(i): c for i, c in enumerate(CLASSES)}
    saved = json.loads((Path(baseline) / "config.json").read_text())
    assert saved["hash"] in card
    assert files_hash(Path(tiny_generator_dir))[:16] in card  # the generator's fingerprint
    assert hashlib.sha256(Path(reference_file).read_bytes()).hexdigest()[:16] in card  # θ*'s
    student = json.loads((Path(baseline) / "data" / "stage-001" / "_manifest.json").read_text())["inputs"]["student"]
    assert student[:16] in card
    assert "| stage=000 | unguided | 10 | 1 |" in card and "| stage=001 | guided | 10 | 1 |" in card
    assert "load_dataset(" in card and "lgd-ray export" in card
    assert "chunk_size: 2" in card  # the config itself


def test_evaluate_puts_its_table_in_the_card(baseline, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    assert "None recorded yet" in (run / "README.md").read_text()
    assert main(["evaluate", str(run), "eval.epochs=1", "eval.seeds=[0]", "eval.arch=convnet2-w8", "--quiet"]) == 0
    result = next(iter(json.loads((run / "evaluation.json").read_text())["results"].values()))
    card = (run / "README.md").read_text()
    assert "None recorded yet" not in card
    assert f"| {100 * result['final_acc_mean']:.1f} ± {100 * result['final_acc_std']:.1f} |" in card


def test_export_imagefolder_round_trips_through_torchvision(baseline, tmp_path, capsys):
    from torchvision.datasets import ImageFolder

    to = tmp_path / "exported"
    assert main(["export", baseline, "--to", str(to)]) == 0
    assert "20 images" in capsys.readouterr().out
    folder = ImageFolder(str(to / "train"))
    assert folder.classes == sorted(CLASSES) and len(folder) == 20
    want = rows_by_key(Path(baseline) / "data")
    seen = set()
    for path, target in folder.samples:
        stage, slot = (int(x) for x in Path(path).stem.split("_"))
        class_id = folder.classes[target]
        row = want[(stage, CLASSES.index(class_id), slot)]
        assert row["class_id"] == class_id
        assert Path(path).read_bytes() == row["image"]["bytes"]  # the stored PNG, unchanged
        image, _ = folder[folder.samples.index((path, target))]
        assert np.array_equal(np.asarray(image)[..., 0], decode_png(row["image"]["bytes"])[0])
        seen.add((stage, CLASSES.index(class_id), slot))
    assert seen == set(want)
    labels = json.loads((to / "labels.json").read_text())
    assert labels["classes"] == CLASSES and labels["imagefolder_class_to_idx"] == folder.class_to_idx
    assert labels["stages"] == [0, 1] and labels["images"] == 20 and len(labels["files"]) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_export_chosen_stages_and_parquet(baseline, tmp_path, monkeypatch):
    only = tmp_path / "stage1"
    assert main(["export", baseline, "--to", str(only), "--stages", "1"]) == 0
    assert sorted(p.name.split("_")[0] for p in (only / "train").rglob("*.png")) == ["001"] * 10
    pq_out = tmp_path / "hub"
    pq_out.mkdir()  # an empty folder is fine
    assert main(["export", baseline, "--to", str(pq_out), "--format", "parquet", "--stages", "0-1"]) == 0
    for stage in ("stage-000", "stage-001"):  # parts and manifests copied byte for byte
        for f in (Path(baseline) / "data" / stage).iterdir():
            assert (pq_out / "data" / stage / f.name).read_bytes() == f.read_bytes()
    assert rows_by_key(pq_out / "data") == rows_by_key(Path(baseline) / "data")
    assert card_header(pq_out / "README.md")["dataset_info"]["splits"][0]["num_examples"] == 20
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ds = datasets.load_dataset(str(pq_out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 20 and ds.features["label"].names == CLASSES


@pytest.mark.parametrize("args, field", [
    (["{missing}", "--to", "{to}"], "DIR"),
    (["{run}", "--to", "{to}", "--stages", "7"], "--stages"),
    (["{run}", "--to", "{to}", "--stages", "one"], "--stages"),
    (["{run}", "--to", "{full}"], "--to"),
    (["{run}", "--to", "{to}", "--format", "zip"], "--format"),
])
def test_export_refuses_bad_input(args, field, baseline, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    names = {"missing": str(tmp_path / "no-such-run"), "to": str(tmp_path / "to"), "run": baseline, "full": str(full)}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = main(["export", *[a.format(**names) for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"lgd-ray: error: {field}: ") and "(" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (full / "keep.txt").read_text() == "mine"
