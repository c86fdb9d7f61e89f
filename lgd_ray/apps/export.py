"""`lgd-ray export`: a distilled output in the forms other tools read.

- `imagefolder`: `FOLDER/train/<class_id>/<stage>_<slot>.png` (the stored PNG bytes, unchanged) and
  `FOLDER/labels.json`: the ImageNet layout that torchvision's `ImageFolder`, and with it the field's
  evaluation code (RDED, Minimax, IGD, SRe2L), reads, so a distilled set drops into those scripts.
- `parquet`: the chosen stages' parts and manifests, byte for byte, under `FOLDER/data/stage-NNN/`, with
  a dataset card `FOLDER/README.md`: a folder to push to the Hugging Face hub as it is.

Everything is checked before anything is written, and the folder is filled under a temporary name and
renamed at the end, so a refused or interrupted export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from ..core.errors import UserError
from ..engine.card import class_names, complete_stages, dataset_card
from ..engine.store import CARD, OutputDir, stage_dir, stage_name

FORMATS = ("imagefolder", "parquet")
SPLIT = "train"  # the field's scripts take the distilled set as the train folder


def parse_stages(text: str | None, complete: list[int], run: str) -> list[int]:
    """`--stages` as `0,2` or `1-3` (default: every complete stage), each one complete in `run`."""
    if not complete:
        raise UserError("DIR", f"{run} has no complete stage", "finish it with `lgd-ray distill`")
    if text is None:
        return complete
    chosen: list[int] = []
    for piece in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", piece)
        if not m:
            raise UserError("--stages", f"{piece.strip()!r} is not a stage or a range",
                            "give stage numbers like 0,2 or a range like 1-3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        chosen += [s for s in range(lo, hi + 1) if s not in chosen]
    known = ", ".join(map(str, complete))
    for s in chosen:
        if s not in complete:
            raise UserError("--stages", f"stage {s} is not a complete stage of {run}", f"choose among {known}")
    return sorted(chosen)


def check_target(to: str, run: OutputDir) -> Path:
    """The export folder: local, new or empty, and not inside the output's own data."""
    if "://" in to:
        raise UserError("--to", f"{to} is not a local folder", "export to a local folder, then copy it to object storage")
    target = Path(to).expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError("--to", f"{to} exists and is not empty", "give a new or empty folder")
    if run.local:
        data = Path(run.path("data"))
        if target == Path(run.root) or target == data or data in target.parents:
            raise UserError("--to", f"{to} lies inside the output's own data", "give a folder outside DIR/data")
    return target


def safe_class_folder(class_id: str) -> str:
    """A class id as a folder name; ids with path separators or nothing but dots cannot be one."""
    if not class_id or "/" in class_id or "\\" in class_id or "\0" in class_id or set(class_id) == {"."}:
        raise UserError("data.classes", f"class id {class_id!r} cannot be a folder name",
                        "export as --format parquet, or use class ids without path separators")
    return class_id


def export_run(run: str, to: str, stages: str | None = None, fmt: str = "imagefolder") -> dict:
    """Write `run`'s complete stages (or `stages`) to the folder `to` as `fmt`; returns a summary."""
    if fmt not in FORMATS:
        raise UserError("--format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    src = OutputDir(run)
    if not src.exists("config.json"):
        raise UserError("DIR", f"{run} is not an lgd-ray output (no config.json)", "give the --out folder of `lgd-ray distill`")
    chosen = parse_stages(stages, complete_stages(src), run)
    problems = [p for s in chosen for p in src.verify_stage(s)]
    if problems:
        raise UserError("DIR", f"{problems[0]}", "rerun `lgd-ray distill` on it to repair the stage")
    target = check_target(to, src)
    table = src.read_rows(chosen, columns=["image", "label", "class_id", "stage", "slot"]) if fmt == "imagefolder" else None
    if table is not None:
        for c in set(table.column("class_id").to_pylist()):
            safe_class_folder(str(c))

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if fmt == "imagefolder":
            summary = _write_imagefolder(src, chosen, table, tmp)
        else:
            summary = _write_parquet(src, chosen, tmp)
        if target.exists():
            target.rmdir()  # checked empty above
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"to": str(target), "format": fmt, "stages": chosen, **summary}


def _write_imagefolder(src: OutputDir, stages: list[int], table, folder: Path) -> dict:
    saved = src.read_json("config.json") or {}
    names = class_names(src, stages)
    files = []
    for img, label, cid, stage, slot in zip(table.column("image").to_pylist(), table.column("label").to_pylist(),
                                            table.column("class_id").to_pylist(), table.column("stage").to_pylist(),
                                            table.column("slot").to_pylist()):
        rel = f"{SPLIT}/{cid}/{stage:03d}_{slot:05d}.png"
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(img["bytes"])
        files.append({"file": rel, "label": label, "class_id": cid, "stage": stage, "slot": slot})
    folders = sorted({f["class_id"] for f in files})
    labels = {
        # the run's labels (what `label` in the Parquet rows means) and ImageFolder's (its sorted folders):
        # they differ whenever the run's class order is not sorted (ImageWoof's, say)
        "classes": names,
        "imagefolder_class_to_idx": {c: i for i, c in enumerate(folders)},
        "source": src.uri, "config_hash": saved.get("hash"), "stages": stages, "images": len(files),
        "files": files,
    }
    (folder / "labels.json").write_text(json.dumps(labels, indent=1))
    return {"images": len(files), "classes": len(folders)}


def _write_parquet(src: OutputDir, stages: list[int], folder: Path) -> dict:
    rows = 0
    for s in stages:
        m = src.manifest(s)
        dest = folder / stage_dir(s)
        dest.mkdir(parents=True)
        for p in m["parts"]:
            (dest / p["file"]).write_bytes(src.read_bytes(f"{stage_dir(s)}/{p['file']}"))
        (dest / "_manifest.json").write_bytes(src.read_bytes(f"{stage_dir(s)}/_manifest.json"))
        rows += m["rows"]
    (folder / CARD).write_text(dataset_card(src, stages))
    return {"images": rows, "parts": [f"{stage_name(s)}: {len(src.manifest(s)['parts'])}" for s in stages]}
