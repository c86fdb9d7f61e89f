"""What every command resolves before it starts work: the Ray session, the run's classes and
generator class map, and the saved config of an existing output."""

from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass

from ..core.classes import generator_class_index, resolve_classes
from ..core.config import Config, from_dict
from ..core.data import image_folder_classes
from ..core.errors import UserError
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


def with_named_sampler(cfg: Config) -> Config:
    """The config with `generator.scheduler: auto` replaced by the sampler the generator's folder names,
    so a run's config.yaml and hash say what sampled it (auto and that sampler named outright are one run)."""
    if cfg.generator.scheduler != "auto":
        return cfg
    # diffusers: not in Train workers
    from ..core.generator import named_sampler, read_generator_info

    c = copy.deepcopy(cfg)
    c.generator.scheduler = named_sampler(read_generator_info(cfg.generator.path))
    return c


def resolve_run(cfg: Config) -> RunInfo:
    """Check the config against the data and the generator; every mismatch is a one-line UserError."""
    class_ids = resolve_classes_only(cfg)
    from ..core.generator import check_guidance_decoder, is_latent, read_generator_info  # diffusers: not in Train workers

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
    if cfg.generator.clip_x0 and is_latent(cfg.generator.path):
        raise UserError("generator.clip_x0", "clips x̂0 to the pixel range [-1, 1], but this generator samples a VAE's latents",
                        "set generator.clip_x0=false for a latent model")
    if cfg.generator.guidance_decoder:
        check_guidance_decoder(cfg.generator.path, cfg.generator.guidance_decoder)
    in_channels = data_channels(cfg)
    return RunInfo(class_ids, class_map, in_channels)


def load_run_config(out_uri: str) -> Config:
    """The resolved config of an existing output (for evaluate / verify / analysis commands)."""
    out = OutputDir(out_uri)
    saved = out.read_json("config.json")
    if saved is None:
        raise UserError("out", f"{out_uri} is not an lgd-ray output (no config.json)", "give the --out folder of `lgd-ray distill`")
    return from_dict(saved["config"])


PATH_KEYS = ("data.root", "generator.path", "generator.guidance_decoder", "reference.path", "distill.seed_source",
             "eval.teacher")


def localize_paths(cfg_dict: dict, driver_cwd: str) -> dict:
    """The config's relative paths as this process can open them, without changing its folder: a path
    that exists here (a job's working_dir copy on this node) stays; one that exists only under the
    driver's folder (a local run, same machine) is made absolute; anything else is left for the run
    to report (one line)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg_dict.items()}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = out[section].get(name)
        if not isinstance(value, str) or not value or os.path.isabs(value) or ":" in value.split("/")[0]:
            continue  # empty, absolute, builtin:/timm:/s3:// ...
        if not os.path.exists(value) and os.path.exists(os.path.join(driver_cwd, value)):
            out[section][name] = os.path.join(driver_cwd, value)
    return out
