"""What every command resolves before it starts work: the Ray session, the run's classes and
generator class map, and the saved config of an existing output."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace

from ..core.classes import generator_class_index, resolve_classes
from ..core.config import Config, from_dict
from ..core.data import image_folder_classes
from ..core.errors import UserError
from ..core.generator import read_generator_info
from .store import OutputDir


def log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[lgd-ray] {msg}", file=sys.stderr, flush=True)


def report_failure(out, record: dict, msg: str) -> None:
    """A failure the run survived: one line on stderr (always, progress or not) and a `failure` event
    in metrics.jsonl, so a finished run shows what it lost and what was redone."""
    print(f"[lgd-ray] recovered: {msg}", file=sys.stderr, flush=True)
    out.append_jsonl("metrics.jsonl", {"event": "failure", **record, "time": round(time.time(), 3)})


def init_ray() -> None:
    """Attach to the cluster this driver runs on (job submit, `ray start`), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):  # a cluster (job submit): its workers' logs go to the job's log
        ray.init(configure_logging=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    # Ray Train polls its workers every 2 s by default: ~4 s of idle per stage on a laptop.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # A laptop terminal shows the progress bars; worker logs stay in the session's log folder.
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


@dataclass
class RunInfo:
    """What the driver resolves once: classes, class map, channels."""

    class_ids: list[str]
    class_map: list[int]
    in_channels: int


def data_channels(cfg: Config) -> int:
    """Channels of the run's images: the digits are grey, every other source is RGB."""
    return 1 if cfg.data.name == "digits" else 3


def resolve_classes_only(cfg: Config) -> list[str]:
    """The run's class ids, checked against the data source."""
    d = cfg.data
    available = None
    if d.name == "digits":
        available = [str(i) for i in range(10)]
    elif d.name == "imagefolder":
        if not d.root or not os.path.isdir(d.root):
            raise UserError("data.root", f"{d.root!r} is not a folder", "give the ImageNet-layout folder (root/train/<wnid>/...)")
        available = image_folder_classes(d.root, d.train_split)  # sorted class folders, as torchvision's ImageFolder
    elif "://" not in d.root and not os.path.exists(d.root):
        raise UserError("data.root", f"{d.root!r} does not exist", "give a Parquet file or folder")
    if d.classes is None and available is None:
        raise UserError("data.classes", "a Parquet source needs its class list", "set data.classes to a preset or a list of ids")
    return resolve_classes(d.classes, available)


def resolve_run(cfg: Config) -> RunInfo:
    """Check the config against the data and the generator; every mismatch is a one-line UserError."""
    class_ids = resolve_classes_only(cfg)
    info = read_generator_info(cfg.generator.path)
    if cfg.generator.class_map is not None:
        class_map = list(cfg.generator.class_map)
        if len(class_map) != len(class_ids):
            raise UserError("generator.class_map", f"has {len(class_map)} entries for {len(class_ids)} classes", "give one generator class per class")
    else:
        class_map = generator_class_index(class_ids, info.class_ids)
    bad = [c for c in class_map if not 0 <= c < info.num_classes]
    if bad:
        raise UserError("generator.class_map", f"class {bad[0]} but the generator has {info.num_classes} classes",
                        "use a generator trained on these classes or fix the map")
    if cfg.reference.path and "://" not in cfg.reference.path and not os.path.isfile(cfg.reference.path):
        raise UserError("reference.path", f"{cfg.reference.path!r} not found", "train one with `lgd-ray train-reference --out DIR`")
    if cfg.distill.seed_source and not os.path.exists(cfg.distill.seed_source):
        raise UserError("distill.seed_source", f"{cfg.distill.seed_source!r} does not exist",
                        "give a Parquet file/folder or an image folder")
    in_channels = data_channels(cfg)
    return RunInfo(class_ids, class_map, in_channels)


def load_run_config(out_uri: str) -> Config:
    """The resolved config of an existing output (for evaluate / verify / analysis commands)."""
    out = OutputDir(out_uri)
    saved = out.read_json("config.json")
    if saved is None:
        raise UserError("out", f"{out_uri} is not an lgd-ray output (no config.json)", "give the --out folder of `lgd-ray distill`")
    return from_dict(saved["config"])



def plan_line(cfg: Config, run: RunInfo) -> str:
    """The run's size in one line, stated before sampling starts: images × κ × steps = image-steps, from
    the same per-stage plan as `lgd-ray plan` (apps/cost.py), which prints GPU-hours and wall time."""
    import copy

    from ..apps.cost import ASSUMED_H100_DIT_XL, make_plan
    from ..core.students import list_students

    c = copy.deepcopy(cfg)
    c.data.classes = list(run.class_ids)  # the resolved classes: a folder's own list needs no data.classes
    # only the sampling counts are read: any training figure will do, for every student family
    rates = {name: 1.0 for name in ("convnet", *list_students())}
    plan = make_plan(c, replace(ASSUMED_H100_DIT_XL, train_images_per_s=rates))
    sampled = [s for s in plan.stages if s.sample_gpu_s > 0]  # a seed_source's stage 0 is copied, not sampled
    images = sum(s.slots for s in plan.stages)
    image_steps = sum(s.slots * s.candidates * (s.unguided_steps + s.guided_steps) for s in sampled)
    guided = sum(s.slots * s.candidates * s.guided_steps for s in sampled)
    seed, rest = plan.stages[0], plan.stages[1:]
    seed_sampled = seed.sample_gpu_s > 0
    terms = [f"{seed.slots:,} seed images"] if seed_sampled else []
    if rest:
        terms.append(f"{len(rest)} stage{'s' if len(rest) > 1 else ''} × {rest[0].slots:,} images × "
                     f"{rest[0].candidates:,} candidates")
    expr = f"({' + '.join(terms)})" if len(terms) > 1 else terms[0] if terms else "0 images"
    copied = f", {seed.slots:,} seed images copied from distill.seed_source" if not seed_sampled else ""
    cfg_passes = "; CFG: 2 denoiser passes each" if cfg.generator.cfg_scale != 1.0 else ""
    return (f"plan: {expr} × {cfg.generator.num_steps} steps = {image_steps:,} image-steps ({guided:,} guided"
            f"{cfg_passes}) for {images:,} images{copied}, in {sum(s.chunks for s in sampled):,} chunks over "
            f"{cfg.ray.samplers} samplers; `lgd-ray plan` gives the GPU-hours")
