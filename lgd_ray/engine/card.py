"""The dataset card of an output: `README.md` in the Hugging Face format, so the folder (or its `data/`)
can be pushed to the hub as it is and a reader finds what it holds, how it was made and how to load it.

The YAML header carries the features (the same as the Parquet schema metadata), the train split with its
data files (the complete stages only: an interrupted stage's parts are never read through the card), and
a license field for the user to set. The body gives the per-stage counts, the config, the hashes of the
generator, θ* and each stage's student, the evaluation table when `lgd-ray evaluate` wrote one, and how to load.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from .store import (
    CARD,
    DATA_DIR,
    OutputDir,
    hf_features_yaml,
    sha256,
    stage_dir,
    stage_name,
)

LICENSE_NOTE = ("# license: set it before sharing; the generator's and the real data's licenses apply "
                "(https://huggingface.co/docs/hub/repositories-licenses)")


def complete_stages(out: OutputDir) -> list[int]:
    """Stages whose manifest is written (present = complete)."""
    return [s for s in out.stages_on_disk() if out.manifest(s) is not None]


def class_names(out: OutputDir, stages: list[int]) -> list[str]:
    """The run's class ids in label order, from the first part's `huggingface` schema metadata (what
    `datasets` will show), else from the rows' (label, class_id) pairs."""
    first = out.manifest(stages[0])["parts"][0]["file"]
    with out.fs.open_input_file(out.path(stage_dir(stages[0]), first)) as f:
        meta = pq.read_schema(f).metadata or {}
    if b"huggingface" in meta:
        return list(json.loads(meta[b"huggingface"])["info"]["features"]["label"]["names"])
    t = out.read_rows(stages, columns=["label", "class_id"])
    pairs = dict(zip(t.column("label").to_pylist(), t.column("class_id").to_pylist()))
    return [str(pairs.get(i, i)) for i in range(max(pairs) + 1)]


def size_category(n: int) -> str:
    """The hub's `size_categories` bucket of n examples."""
    for limit, name in ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def files_hash(root: Path) -> str:
    """sha256 over (relative path, sha256) of every file under `root`: one fingerprint of a model folder."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        h.update(f"{f.relative_to(root).as_posix()}\0{digest.hexdigest()}\n".encode())
    return h.hexdigest()


def generator_hash(path: str) -> str | None:
    """Fingerprint of the generator's files, where they are on this machine (None where they are not)."""
    try:
        from ..core.generator import _resolve_root

        return files_hash(Path(_resolve_root(path)))
    except Exception:  # noqa: BLE001 -- a card never fails a run; it says "not available" instead
        return None


def reference_hash(out: OutputDir, cfg: dict) -> str | None:
    """sha256 of θ*'s safetensors: the given `reference.path`, or the one this output trained."""
    try:
        path = (cfg.get("reference") or {}).get("path")
        if path:
            folder, name = path.rsplit("/", 1) if "/" in path else (".", path)
            return sha256(OutputDir(folder).read_bytes(name))
        rel = "reference/model.safetensors"
        return sha256(out.read_bytes(rel)) if out.exists(rel) else None
    except Exception:  # noqa: BLE001
        return None


def _pct(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"


def evaluation_table(out: OutputDir) -> str | None:
    """evaluation.json (`lgd-ray evaluate`) as a markdown table, or None when the output has none."""
    saved = out.read_json("evaluation.json")
    if not saved or not saved.get("results"):
        return None
    e = saved.get("eval") or {}
    lines = [(f"Protocol: {e.get('arch', '?')} trained from scratch for {e.get('epochs', '?')} epochs on this set, "
             f"{e.get('protocol', 'hard')} labels, tested on the real test split; mean ± std over seeds."), "",
             "| set | IPC | images | final acc % | best acc % | seeds |", "|---|---|---|---|---|---|"]
    for name, r in saved["results"].items():
        lines.append(f"| {name} | {r.get('ipc', '–')} | {r.get('images', '–')} | "
                     f"{_pct(r.get('final_acc_mean'), r.get('final_acc_std'))} | "
                     f"{_pct(r.get('best_acc_mean'), r.get('best_acc_std'))} | {r.get('n', '–')} |")
    return "\n".join(lines)


def _short(h: str | None) -> str:
    return f"`{h[:16]}`" if h else "–"


def dataset_card(out: OutputDir, stages: list[int] | None = None) -> str:
    """The card of `out` over `stages` (default: every complete stage); data files are named relative to
    the folder the card sits in, `data/stage-NNN/*.parquet`, as in the output and in a Parquet export."""
    saved = out.read_json("config.json") or {}
    cfg = saved.get("config") or {}
    stages = complete_stages(out) if stages is None else list(stages)
    manifests = {s: out.manifest(s) for s in stages}
    rows = sum(m["rows"] for m in manifests.values())
    names = class_names(out, stages) if stages else []
    download = sum(out.fs.get_file_info(out.path(stage_dir(s), p["file"])).size or 0
                   for s, m in manifests.items() for p in m["parts"])
    d, g, data = cfg.get("distill", {}), cfg.get("generator", {}), cfg.get("data") or {}
    header = {
        "license": "unknown",
        "pretty_name": f"lgd-ray distilled set {saved.get('hash', '')}".strip(),
        "task_categories": ["image-classification"],
        "tags": ["dataset-distillation", "synthetic", "lgd-ray"],
        "size_categories": [size_category(rows)],
        "configs": [{"config_name": "default", "data_files": [
            {"split": "train", "path": [f"{stage_dir(s)}/*.parquet" for s in stages]}]}],
        "dataset_info": {"features": hf_features_yaml(names),
                         "splits": [{"name": "train", "num_examples": rows}], "download_size": download},
    }
    yaml_text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000)
    guided = bool(d.get("lam", 0)) or int(d.get("k", 1)) > 1
    ref = reference_hash(out, cfg) if guided else None
    per_class = len(names) or 1
    stage_rows = []
    for s, m in manifests.items():
        copied = s == 0 and d.get("seed_source")
        lam, k, gamma = (0.0, 1, 0.0) if s == 0 else (d.get("lam"), d.get("k"), d.get("gamma"))
        how = f"copied from `{Path(str(d['seed_source'])).name}`" if copied else ("unguided" if s == 0 else "guided")
        stage_rows.append(f"| {stage_name(s)} | {how} | {m['rows']} | {m['rows'] / per_class:g} | {len(m['parts'])} | "
                          f"{lam} | {k} | {gamma} | {_short((m.get('inputs') or {}).get('student'))} |")
    evaluation = evaluation_table(out)
    config_yaml = out.read_bytes("config.yaml").decode() if out.exists("config.yaml") else json.dumps(cfg, indent=1)
    versions = ", ".join(f"{k} {v}" for k, v in (saved.get("versions") or {}).items())
    precision = saved.get("precision") or {}
    names_text = ", ".join(f"{i} = `{c}`" for i, c in enumerate(names[:20])) + (" …" if len(names) > 20 else "")
    return f"""---
{LICENSE_NOTE}
{yaml_text}---

# Distilled image set (lgd-ray, config `{saved.get('hash', '?')}`)

{rows} synthetic images ({len(names)} classes, {rows / per_class:g} per class) made by Learnability-Guided
Diffusion: a seed increment of unguided samples, then {max(0, len(stages) - 1)} guided increment(s), each sampled
against the student trained on the increments before it (λ = {d.get('lam')}, ω = {d.get('omega')}, κ = {d.get('k')},
γ = {d.get('gamma')}, window {d.get('window')}). Meant for training a classifier from scratch, as the field's
protocols do. `label` is a ClassLabel over the run's class ids: {names_text}.

## Contents

| stage | increment | images | per class | parts | λ | κ | γ | student θ_(i-1) sha256 |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(stage_rows)}

Columns: `image` (PNG), `label`, `class_id`, `generator_class`, `stage`, `slot`, `seed`, `candidate`,
`num_candidates`, `score` (learnability S at selection), `student_loss`, `reference_loss`, `latent` (float16
bytes, shape in the Parquet schema metadata), `lambda`, `omega`, `gamma`. Each `data/stage-NNN/_manifest.json`
lists its parts with their sha256 (`lgd-ray verify` checks them).

## Provenance

- Generator: `{g.get('path')}` ({g.get('scheduler')}, {g.get('num_steps')} steps, CFG {g.get('cfg_scale')}),
  files sha256 {_short(generator_hash(str(g.get('path')))) if g.get('path') else '–'}.
- Reference θ*: {_short(ref) if guided else 'not used (λ = 0, κ = 1)'} ({(cfg.get('reference') or {}).get('arch')}).
- Real data: {data.get('name')} (classes: {data.get('classes') or 'all'}, {data.get('image_size')} px).
- Config hash `{saved.get('hash', '?')}`; run seed {cfg.get('seed')}; sampled in {precision.get('dtype', '?')} on {precision.get('device', '?')}; {versions}.
  Every image is a pure function of (seed, stage, class, slot, candidate) and the stage's inputs.

## Evaluation

{evaluation or "None recorded yet: `lgd-ray evaluate PATH` writes `evaluation.json` and refreshes this card."}

## How to load

`PATH` is this folder (or its hub id once pushed).

```python
from datasets import load_dataset
ds = load_dataset("PATH", split="train")          # image: Image, label: ClassLabel, as in the header
ds = load_dataset("parquet", data_files="PATH/{DATA_DIR}/**/*.parquet", split="train")  # the same, from the files

import pyarrow.dataset as pads
table = pads.dataset("PATH/{DATA_DIR}").to_table()
import ray
rows = ray.data.read_parquet("PATH/{DATA_DIR}")
import pandas as pd
df = pd.read_parquet("PATH/{DATA_DIR}")
```

As an ImageNet-layout folder of PNGs for the field's evaluation code (RDED, Minimax, IGD, SRe2L):
`lgd-ray export PATH --to FOLDER` writes `FOLDER/train/<class_id>/<stage>_<slot>.png` and `labels.json`.
To publish: `ds.push_to_hub("USER/NAME")`, or upload `README.md` and `{DATA_DIR}/` as they are.

## Config

<details><summary>config.yaml</summary>

```yaml
{config_yaml.rstrip()}
```

</details>
"""


def write_card(out: OutputDir) -> None:
    """(Re)write `README.md` for the stages complete now; called whenever a stage's manifest is written."""
    out.write_text(CARD, dataset_card(out))
