"""The output directory: Parquet parts per chunk, a manifest per stage, checkpoints, config, dataset card.

Layout (local path, NFS, or s3:// / gs:// through pyarrow filesystems):
    <out>/README.md                            dataset card (Hugging Face format), refreshed at every manifest
    <out>/config.yaml, config.json             resolved config, its hash, versions
    <out>/data/stage-000/part-00000.parquet    one file per chunk, written atomically
    <out>/data/stage-000/_manifest.json        parts, rows, sha256, inputs; written last: present = complete
    <out>/checkpoints/stage=000/model.safetensors
    <out>/reference/model.safetensors, metrics.jsonl, results.json, report.md, preview/stage=000.png
The parts sit under `data/` (the Hugging Face hub's convention) so that everything a reader of `<out>/data`
meets is Parquet or hidden (`_manifest.json`): pandas, pyarrow, Ray Data and `datasets` read it as one
dataset (see stage_dir for why the folders are not hive-style), and `datasets.load_dataset(<out>)` finds
it through the card.
Atomic writes (OutputDir.write_bytes): a hidden temp file (`.<name>.tmp-<8 hex>`, which every reader
above skips) then a rename on POSIX, a server-side move of a hidden temp object on object stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from safetensors.torch import load, save

from ..core.data import ImageSet, encode_png, read_parquet_images
from ..core.errors import UserError
from ..core.sampler import Sample


def weights_bytes(state: dict) -> bytes:
    """A state dict as safetensors bytes (CPU, contiguous), for OutputDir.write_bytes."""
    return save({k: v.detach().cpu().contiguous() for k, v in state.items()})

SCHEMA = pa.schema([
    ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    ("label", pa.int64()),
    ("class_id", pa.string()),
    ("generator_class", pa.int64()),
    ("stage", pa.int32()),
    ("slot", pa.int32()),
    ("seed", pa.int64()),
    ("candidate", pa.int32()),
    ("num_candidates", pa.int32()),
    ("score", pa.float32()),
    ("student_loss", pa.float32()),
    ("reference_loss", pa.float32()),
    ("latent", pa.binary()),
    ("lambda", pa.float32()),
    ("omega", pa.float32()),
    ("gamma", pa.float32()),
])


DATA_DIR = "data"
CARD = "README.md"


def stage_name(stage: int) -> str:
    return f"stage={stage:03d}"


def stage_dir(stage: int) -> str:
    """A stage's folder inside the output: `data/stage-000`, under the hub's `data/`. Not hive-style
    (`stage=000`): pandas and `pyarrow.parquet` would infer a dictionary `stage` partition from it that
    clashes with the int32 `stage` column, and refuse to read the folder."""
    return f"{DATA_DIR}/stage-{stage:03d}"


# Hugging Face `datasets` feature of every column that is not a plain value (the rest: Value(arrow type))
_VALUE_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.int32(): "int32", pa.float32(): "float32",
                 pa.binary(): "binary"}


def hf_features(class_ids: list[str]) -> dict:
    """The columns as `datasets.Features.to_dict()` writes them: `image` an Image, `label` a ClassLabel
    with the run's class ids as names. Kept in every part's schema metadata (key `huggingface`, as
    `datasets` itself writes it), so `load_dataset("parquet", ...)` needs no cast."""
    out: dict = {}
    for f in SCHEMA:
        if f.name == "image":
            out[f.name] = {"_type": "Image"}
        elif f.name == "label":
            out[f.name] = {"names": [str(c) for c in class_ids], "_type": "ClassLabel"}
        else:
            out[f.name] = {"dtype": _VALUE_DTYPES[f.type], "_type": "Value"}
    return out


def hf_features_yaml(class_ids: list[str]) -> list[dict]:
    """The same features in a dataset card's YAML form (`dataset_info.features`)."""
    rows: list[dict] = []
    for name, feat in hf_features(class_ids).items():
        if feat["_type"] == "Image":
            rows.append({"name": name, "dtype": "image"})
        elif feat["_type"] == "ClassLabel":
            rows.append({"name": name, "dtype": {"class_label": {"names": {str(i): c for i, c in enumerate(feat["names"])}}}})
        else:
            rows.append({"name": name, "dtype": feat["dtype"]})
    return rows


def part_name(chunk_index: int) -> str:
    return f"part-{chunk_index:05d}.parquet"


_TEMP = re.compile(r"\..+\.tmp-[0-9a-f]{8}")


def temp_path(final: str) -> str:
    """Where a write of `final` goes first: `<dir>/.<name>.tmp-<8 hex>`, beside it. The leading dot hides
    it from pyarrow, pandas, Ray Data and `datasets` (they skip `_` and `.` names) and the name does not
    end in `.parquet`, so what a killed writer leaves is never read as data."""
    head, _, name = final.rpartition("/")
    return f"{head}/.{name}.tmp-{uuid.uuid4().hex[:8]}"


def is_temp(name: str) -> bool:
    """Whether a file name is one of temp_path's."""
    return _TEMP.fullmatch(name) is not None


def is_part_file(name: str) -> bool:
    """A Parquet file a reader takes as data: `*.parquet`, not hidden (`_`, `.`)."""
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class StageParams:
    """Per-stage constants written into every row."""

    class_ids: list[str]
    class_map: list[int]
    num_candidates: int
    lam: float
    omega: float
    gamma: float
    unguided_candidates: int = 0  # candidates below this index were sampled without guidance: λ = γ = 0 in their rows


def samples_to_table(samples: list[Sample], p: StageParams) -> pa.Table:
    rows = {name: [] for name in SCHEMA.names}
    for s in samples:
        it = s.item
        cid = p.class_ids[it.label]
        rows["image"].append({"bytes": encode_png(s.image), "path": f"{stage_name(it.stage)}/{cid}/{it.slot:05d}.png"})
        rows["label"].append(it.label)
        rows["class_id"].append(cid)
        rows["generator_class"].append(p.class_map[it.label])
        rows["stage"].append(it.stage)
        rows["slot"].append(it.slot)
        rows["seed"].append(s.seed)
        rows["candidate"].append(s.candidate)
        rows["num_candidates"].append(p.num_candidates)
        rows["score"].append(s.score)
        rows["student_loss"].append(s.student_loss)
        rows["reference_loss"].append(s.reference_loss)
        rows["latent"].append(np.ascontiguousarray(s.latent, dtype=np.float16).tobytes())
        guided = s.candidate >= p.unguided_candidates  # each row records the guidance its image was made with
        rows["lambda"].append(p.lam if guided else 0.0)
        rows["omega"].append(p.omega)
        rows["gamma"].append(p.gamma if guided else 0.0)
    shape = ",".join(str(d) for d in samples[0].latent.shape) if samples else ""
    schema = SCHEMA.with_metadata({"latent_shape": shape, "latent_dtype": "float16",
                                   "huggingface": json.dumps({"info": {"features": hf_features(p.class_ids)}})})
    return pa.Table.from_pydict(rows, schema=schema)


def table_to_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def check_output_location(uri: str, field: str = "--out") -> None:
    """Refuse, before any work starts, an output that cannot be made: a local path that is a file, or
    under a file, or where nothing can be created; an object store URI whose bucket cannot be reached
    (network, endpoint, credentials) or does not exist. It only reads: nothing is created."""
    if "://" not in uri:
        _check_local_output(uri, field)
        return
    try:
        fs, root = pafs.FileSystem.from_uri(uri)  # S3 resolves the bucket's region here (3 tries)
        fs = _quick_filesystem(fs)
        bucket = root.split("/")[0]
        if not bucket:
            raise UserError(field, f"{uri} names no bucket", f"write e.g. {uri.split('://', 1)[0]}://BUCKET/runs/demo")
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
        info = fs.get_file_info(root) if found and root.strip("/") != bucket else None
    except (OSError, ValueError) as e:  # ArrowInvalid (a malformed URI) is a ValueError
        scheme = uri.split("://", 1)[0]
        creds = {"s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE; ?region=... or "
                       "?endpoint_override=HOST:PORT&scheme=http in the URI for another S3 service",
                 "gs": "GOOGLE_APPLICATION_CREDENTIALS"}.get(scheme, "the filesystem's credentials")
        why = (str(e).splitlines() or [type(e).__name__])[0]
        why = why if len(why) <= 240 else why[:240] + "..."
        raise UserError(field, f"cannot reach {uri}: {why}",
                        f"check the bucket name, the network and the credentials: {creds}") from None
    if not found:
        raise UserError(field, f"bucket {bucket!r} of {uri} does not exist", "create it, or give an existing bucket")
    if info is not None and info.type == pafs.FileType.File:
        raise UserError(field, f"{uri} is an object, not a folder", "give a prefix that holds no object of that name")


def _check_local_output(uri: str, field: str) -> None:
    path = os.path.abspath(uri)
    fix = "choose a folder you can write to: a new one, or an earlier run's output to resume it"
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UserError(field, f"{uri} is a file, not a folder", fix)
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(field, f"{uri} is not writable", fix)
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(field, f"cannot create {uri}: {parent} is a file", fix)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(field, f"cannot create {uri}: {parent} is not writable", fix)


def _quick_filesystem(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The same object store with short timeouts and few retries, for a check that must not hang: by
    default S3 retries with back-off and GCS keeps retrying for 15 minutes."""
    try:
        kwargs = dict(fs.__reduce__()[1][0])  # the filesystem's own options (how pyarrow pickles it)
    except (TypeError, IndexError, KeyError, AttributeError):
        return fs
    s3, gcs = getattr(pafs, "S3FileSystem", None), getattr(pafs, "GcsFileSystem", None)
    if s3 is not None and isinstance(fs, s3):
        return s3(**{**kwargs, "connect_timeout": 5, "request_timeout": 20,
                     "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2)})
    if gcs is not None and isinstance(fs, gcs):
        import datetime

        return gcs(**{**kwargs, "retry_time_limit": datetime.timedelta(seconds=5)})
    return fs


class OutputDir:
    """A run's output folder on any pyarrow filesystem."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None):
        if filesystem is not None:  # `uri` is then a path on it
            self.fs, self.root = filesystem, uri.rstrip("/")
        elif "://" in uri:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        else:
            # absolute, so Ray workers (whose working directory differs) find the same folder
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
            uri = self.root
        self.uri = uri
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # --- plain files -----------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: readers see the old file or the whole new one, never a torn one; a write that fails or
        is killed leaves the old file (or none) at `rel`.

        The bytes go to a hidden temp (temp_path) first, then replace `rel`: by os.replace on a local
        filesystem, by a server-side move (copy, then delete of the temp) on object stores, where the
        object at `rel` then appears whole or not at all. Streaming to `rel` itself would not do: an
        object store's output stream commits what it holds when it is closed, which `with` does on an
        exception too (and so does its destructor), and pyarrow exposes no abort() to discard a
        partial upload (apache/arrow#40502; none up to pyarrow 26). So a failed write's temp is aborted
        where the stream can (a later pyarrow), else closed, then deleted; one a killed writer left is
        skipped by every reader and removed with its stage's next manifest (write_manifest).
        """
        final = self.path(rel)
        self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
        tmp = temp_path(final)
        self._write_stream(tmp, data)
        try:
            if self.local:
                os.replace(tmp, final)
            else:
                self._move(tmp, final)
        except BaseException:
            self._discard(tmp)
            raise

    def _write_stream(self, path: str, data: bytes) -> None:
        """Write `data` to `path` in one stream; on any failure nothing is left at `path`."""
        stream = self.fs.open_output_stream(path)
        try:
            stream.write(data)
        except BaseException:
            abort = getattr(stream, "abort", None)
            with contextlib.suppress(Exception):  # the write's own error is the one to report
                abort() if abort is not None else stream.close()
            self._discard(path)
            raise
        try:
            stream.close()  # an object store uploads here: it may fail too
        except BaseException:
            self._discard(path)
            raise

    def _move(self, src: str, dst: str) -> None:
        try:
            self.fs.move(src, dst)
        except NotImplementedError:  # a store without rename (e.g. flat-namespace Azure): copy, then delete
            self.fs.copy_file(src, dst)
            self.fs.delete_file(src)

    def _discard(self, path: str) -> None:
        """Best effort: a temp that cannot be deleted now stays hidden and goes with the next manifest."""
        with contextlib.suppress(Exception):
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                self.fs.delete_file(path)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def read_json(self, rel: str) -> dict | None:
        return json.loads(self.read_bytes(rel)) if self.exists(rel) else None

    def append_jsonl(self, rel: str, record: dict) -> None:
        """Append one JSON line to `rel` (metrics.jsonl).

        Local filesystem (and NFS): the file is opened in append mode and the line goes in one write,
        then fsync; earlier bytes are never rewritten, so a reader (`tail -f`, a plan fitted while the
        run goes on) sees the file only grow, and a killed run loses at most the line it was writing.
        A file that does not end in a newline (such a torn line) gets one first, so that the new record
        is a line of its own.

        Object stores cannot append: an object is only ever replaced whole. There the file is read and
        written back whole through write_bytes (temp object + server-side move), so a reader sees the
        old object or the new one, never a partial one. That costs the file's size per record, which
        is small here (a few records per stage), and assumes one writer (the driver) at a time.
        """
        line = (json.dumps(record) + "\n").encode()
        if not self.local:
            old = self.read_bytes(rel) if self.exists(rel) else b""
            self.write_bytes(rel, (old if not old or old.endswith(b"\n") else old + b"\n") + line)
            return
        path = self.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:  # one write for a line of this size; the loop only guards a short write
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def delete(self, rel: str) -> None:
        info = self.fs.get_file_info(self.path(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(rel))

    def _stage_folders(self, rel: str, prefix: str) -> list[int]:
        folder = self.path(rel) if rel else self.root
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(folder))
        names = [i.base_name[len(prefix):] for i in infos
                 if i.type == pafs.FileType.Directory and i.base_name.startswith(prefix)]
        return sorted(int(n) for n in names if n.isdigit())

    def check_layout(self) -> None:
        """Refuse an output written before the parts moved to data/stage-NNN/: resuming it would start over."""
        old = self._stage_folders("", "stage=")
        if old:
            raise UserError("out", f"{self.uri} keeps its parts in the old layout ({stage_name(old[0])}/ beside "
                            "config.json)", f"move each stage=NNN/ folder to data/stage-NNN/, e.g. mkdir "
                            f"{self.uri}/data && mv {self.uri}/{stage_name(old[0])} {self.uri}/{stage_dir(old[0])}")

    def stages_on_disk(self) -> list[int]:
        self.check_layout()
        return self._stage_folders(DATA_DIR, "stage-")

    # --- parts and manifests --------------------------------------------------------------------
    def write_part(self, stage: int, chunk_index: int, samples: list[Sample], params: StageParams) -> dict:
        data = table_to_bytes(samples_to_table(samples, params))
        rel = f"{stage_dir(stage)}/{part_name(chunk_index)}"
        self.write_bytes(rel, data)
        return {"file": part_name(chunk_index), "rows": len(samples), "sha256": sha256(data)}

    def part_info(self, stage: int, chunk_index: int, expected: list[tuple[int, int]]) -> dict | None:
        """Info of an existing part if it is readable and holds exactly the expected (label, slot) rows."""
        rel = f"{stage_dir(stage)}/{part_name(chunk_index)}"
        if not self.exists(rel):
            return None
        data = self.read_bytes(rel)
        try:
            t = pq.read_table(io.BytesIO(data), columns=["label", "slot", "stage"])
        except Exception:  # noqa: BLE001 -- any unreadable part is recomputed
            return None
        keys = list(zip(t.column("label").to_pylist(), t.column("slot").to_pylist()))
        if keys != expected or set(t.column("stage").to_pylist()) - {stage}:
            return None
        return {"file": part_name(chunk_index), "rows": len(keys), "sha256": sha256(data)}

    def write_manifest(self, stage: int, parts: list[dict], inputs: dict) -> None:
        manifest = {"stage": stage, "rows": sum(p["rows"] for p in parts), "parts": parts, "inputs": inputs}
        self.write_text(f"{stage_dir(stage)}/_manifest.json", json.dumps(manifest, indent=1))
        self.remove_temps(stage_dir(stage))  # the stage is complete: no writer of it is left
        if self.exists("config.json"):  # a run's output (not a bare test folder): its card follows the stages
            from .card import write_card

            write_card(self)

    def remove_temps(self, rel: str) -> list[str]:
        """Delete the temps (temp_path's names only) that killed writers left in the folder `rel`."""
        folder = self.path(rel)
        if self.fs.get_file_info(folder).type != pafs.FileType.Directory:
            return []
        stale = [i for i in self.fs.get_file_info(pafs.FileSelector(folder))
                 if i.type == pafs.FileType.File and is_temp(i.base_name)]
        for i in stale:
            self._discard(i.path)
        return [i.base_name for i in stale]

    def manifest(self, stage: int) -> dict | None:
        m = self.read_json(f"{stage_dir(stage)}/_manifest.json")
        if m is None:
            self.check_layout()
        return m

    def verify_stage(self, stage: int) -> list[str]:
        """Problems of a stage: missing manifest, missing or changed parts (sha256), extra parts."""
        m = self.manifest(stage)
        name = stage_dir(stage)
        if m is None:
            return [f"{name}: no manifest (stage incomplete)"]
        problems = []
        listed = {p["file"] for p in m["parts"]}
        for p in m["parts"]:
            rel = f"{name}/{p['file']}"
            if not self.exists(rel):
                problems.append(f"{rel}: missing")
            elif sha256(self.read_bytes(rel)) != p["sha256"]:
                problems.append(f"{rel}: sha256 differs from the manifest (corrupt or changed)")
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(name)))
        extra = sorted(i.base_name for i in infos if is_part_file(i.base_name) and i.base_name not in listed)
        problems += [f"{name}/{e}: not in the manifest" for e in extra]
        return problems

    def stage_files(self, stages: list[int]) -> list[str]:
        """The part files of complete stages, in manifest order (stable across runs)."""
        paths = []
        for s in stages:
            m = self.manifest(s)
            if m is None:
                raise UserError("out", f"{stage_name(s)} of {self.uri} is incomplete", "rerun `lgd-ray distill` to finish it")
            paths += [self.path(stage_dir(s), p["file"]) for p in m["parts"]]
        return paths

    def read_stages(self, stages: list[int], class_ids: list[str] | None = None) -> ImageSet:
        """The images of complete stages in memory, in manifest order (for small sets: evaluation,
        diagnostics; a training worker streams them with `ParquetImageSet` instead)."""
        return read_parquet_images(self.stage_files(stages), class_ids=class_ids, filesystem=self.fs)

    def read_rows(self, stages: list[int], columns: list[str] | None = None) -> pa.Table:
        tables = []
        for s in stages:
            m = self.manifest(s) or {"parts": []}
            for p in m["parts"]:
                with self.fs.open_input_file(self.path(stage_dir(s), p["file"])) as f:
                    tables.append(pq.read_table(f, columns=columns))
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def load_weights(out: OutputDir, rel: str) -> dict[str, torch.Tensor] | None:
    """The safetensors weights at `rel` in `out`, or None when absent."""
    return load(out.read_bytes(rel)) if out.exists(rel) else None
