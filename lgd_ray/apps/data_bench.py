"""`lgd-ray bench --data`: what a Train worker holds while it reads its set, at N and 4N images.

A Train worker's memory must be bounded by the batches in flight, not by the set (D_3 of ImageNet-1K at
224 px is ~31 GB as the float copy the old path made). On a generated ImageNet-layout JPEG folder (θ*'s
source) and on Parquet parts of PNGs (a distilled D_i), one epoch of the worker's own training loop runs
in a fresh process per case; the process's peak RSS (and its decoding processes' peak) and images/s are
recorded (VmHWM, which starts afresh at exec). `streamed` is the engine's path (lazy decode, resize once, DataLoader workers); `in-memory` is
the old one (the whole set decoded first), kept here as the reference the ratio is taken against.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..engine.train_job import peak_rss_mib


@dataclass
class DataSpec:
    n: int = 400  # images of the small case; the large one has 4n
    classes: int = 10
    source_px: int = 160  # side of the generated JPEGs / PNGs
    student_px: int = 112  # the size the student trains at (each image is resized once, to this)
    batch_size: int = 64
    loader_workers: int = 1


def _smooth_images(n: int, px: int, seed: int) -> np.ndarray:
    """n uint8 RGB images, low-frequency noise (compresses like photos, not like white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, px // 8, axis=1), px // 8, axis=2)


def write_jpeg_folder(root: str, n: int, classes: int, px: int, seed: int = 0) -> list[str]:
    """An ImageNet-layout folder: root/train/<wnid>/<i>.JPEG, n images over `classes` wnids."""
    from PIL import Image

    from ..core.classes import imagenet_wnids

    wnids = sorted(imagenet_wnids()[:classes])
    for wnid in wnids:
        os.makedirs(os.path.join(root, "train", wnid), exist_ok=True)
    for i, img in enumerate(_smooth_images(n, px, seed)):
        Image.fromarray(img).save(os.path.join(root, "train", wnids[i % classes], f"{i:06d}.JPEG"), quality=90)
    return wnids


def write_parquet_parts(folder: str, n: int, classes: int, px: int, rows_per_part: int = 8, seed: int = 0) -> list[str]:
    """n PNG rows in the contract schema, `rows_per_part` per file (a chunk), as a distilled stage holds them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..core.data import encode_png

    os.makedirs(folder, exist_ok=True)
    images = _smooth_images(n, px, seed)
    files = []
    for start in range(0, n, rows_per_part):
        batch = images[start:start + rows_per_part]
        blobs = [encode_png(x.transpose(2, 0, 1)) for x in batch]
        labels = [(start + j) % classes for j in range(len(batch))]
        table = pa.table({
            "image": pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([""] * len(blobs))],
                                                names=["bytes", "path"]),
            "label": pa.array(labels, pa.int64()), "class_id": pa.array([str(y) for y in labels])})
        files.append(os.path.join(folder, f"part-{start // rows_per_part:05d}.parquet"))
        pq.write_table(table, files[-1])
    return files


def _one_epoch(kind: str, mode: str, path: str, spec: dict, class_ids: list[str], queue) -> None:
    """In a fresh process: build the source as the Train worker does, train one epoch, report."""
    import torch

    from ..core.data import (
        ImageFolderSet,
        ParquetImageSet,
        materialize,
        read_parquet_images,
    )
    from ..core.students import build_student
    from ..core.train import TrainSettings, train_classifier

    torch.set_num_threads(1)
    watch = _ChildrenRss()
    watch.start()
    s = DataSpec(**spec)
    t0 = time.perf_counter()  # from opening the source: the in-memory path pays its decoding up front
    if kind == "jpeg":
        data = ImageFolderSet(path, "train", class_ids, s.student_px)  # decodes at the student's size
        if mode == "in-memory":
            data = materialize(data)
    else:
        files = sorted(os.path.join(path, f) for f in os.listdir(path))
        data = (ParquetImageSet(files, class_ids, s.student_px) if mode == "streamed"
                else read_parquet_images(files, class_ids).resized(s.student_px))
    net = build_student("convnet2-w8", len(class_ids), s.student_px, 3, seed=0)
    settings = TrainSettings(epochs=1, batch_size=s.batch_size, augment="none",
                             loader_workers=s.loader_workers if mode == "streamed" else 0)
    train_classifier(net, data, settings)
    wall = time.perf_counter() - t0
    watch.stop = True
    queue.put({"peak_rss_mib": peak_rss_mib(), "decoders_peak_rss_mib": watch.children_peak / 1024,
               "images_per_s": len(data) / wall, "images": len(data)})


class _ChildrenRss(threading.Thread):
    """Samples the summed RSS of this process's children (the DataLoader's decoding processes)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.children_peak = False, 0

    def run(self) -> None:
        me = os.getpid()
        while not self.stop:
            try:
                with open(f"/proc/{me}/task/{me}/children") as f:
                    kids = f.read().split()
                total = 0
                for pid in kids:
                    with open(f"/proc/{pid}/status") as f:
                        total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
                self.children_peak = max(self.children_peak, total)
            except (OSError, StopIteration):
                pass
            time.sleep(0.02)


def _measure(kind: str, mode: str, path: str, spec: DataSpec, class_ids: list[str]) -> dict:
    ctx = mp.get_context("spawn")  # a clean process: its peak RSS is this case's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=_one_epoch, args=(kind, mode, path, asdict(spec), class_ids, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def run_data_bench(spec: DataSpec, out: str | None = None, progress: bool = True) -> dict:
    """Peak RSS and images/s of one worker's epoch, streamed vs in memory, at n and 4n images, for a
    JPEG folder and for Parquet parts; data.json (+ data.md) in `out` when given."""
    tmp = tempfile.mkdtemp(prefix="lgd-data-bench-")
    rows = []
    try:
        for n in (spec.n, 4 * spec.n):
            wnids = write_jpeg_folder(os.path.join(tmp, f"jpeg{n}"), n, spec.classes, spec.source_px)
            write_parquet_parts(os.path.join(tmp, f"parquet{n}"), n, spec.classes, spec.source_px)
            for kind, path, classes in (("jpeg", os.path.join(tmp, f"jpeg{n}"), wnids),
                                        ("parquet", os.path.join(tmp, f"parquet{n}"), [str(c) for c in range(spec.classes)])):
                for mode in ("streamed", "in-memory"):
                    r = {"source": kind, "mode": mode, "n": n, **_measure(kind, mode, path, spec, classes)}
                    rows.append(r)
                    if progress:
                        print(f"[lgd-ray] {kind:7s} {mode:9s} n={n:6d}: peak RSS {r['peak_rss_mib']:.0f} MiB, "
                              f"{r['images_per_s']:.0f} images/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    growth = {}
    for kind in ("jpeg", "parquet"):
        for mode in ("streamed", "in-memory"):
            small, large = (next(r for r in rows if (r["source"], r["mode"], r["n"]) == (kind, mode, n))
                            for n in (spec.n, 4 * spec.n))
            growth[f"{kind}/{mode}"] = large["peak_rss_mib"] - small["peak_rss_mib"]
    report = {"spec": asdict(spec), "rows": rows, "rss_growth_mib_n_to_4n": growth}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "data.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(out, "data.md"), "w") as f:
            f.write(format_data_bench(report) + "\n")
    return report


def format_data_bench(report: dict) -> str:
    s = report["spec"]
    lines = [f"One Train worker's epoch ({s['source_px']} px sources -> {s['student_px']} px, batch {s['batch_size']}, "
             f"{s['loader_workers']} decoding process(es) when streamed):", "",
             "| source | mode | images | peak RSS MiB | its decoders' RSS MiB (peak, summed) | images/s |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['source']} | {r['mode']} | {r['n']} | {r['peak_rss_mib']:.0f} | "
                     f"{r['decoders_peak_rss_mib']:.0f} | {r['images_per_s']:.0f} |")
    lines += ["", "Peak RSS growth from n to 4n images (MiB): " +
              ", ".join(f"{k} {v:+.0f}" for k, v in report["rss_growth_mib_n_to_4n"].items())]
    return "\n".join(lines)
